// goclient is the Go (crypto/tls) HTTPS keep-alive client of scripts/bench-runtimes.sh and
// tests/e2e/doctor.sh.
//
//	goclient URL COUNT [--hold]
//
// One connection, one warm-up request (the handshake), then COUNT timed POST requests whose
// 1 KiB body carries $BENCH once; prints "ns_per_request N". With --hold it then prints
// "ready" and waits until killed. Trusts $SSL_CERT_FILE (Go reads it itself).
package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: goclient URL COUNT [--hold]")
		os.Exit(2)
	}
	url := os.Args[1]
	count, err := strconv.Atoi(os.Args[2])
	if err != nil || count < 1 {
		fmt.Fprintln(os.Stderr, "goclient: COUNT must be a positive number")
		os.Exit(2)
	}
	payload := bytes.Repeat([]byte("y"), 1024)
	copy(payload, bytes.Repeat([]byte("x"), 64))
	copy(payload[64:], os.Getenv("BENCH"))
	client := &http.Client{Transport: &http.Transport{
		MaxConnsPerHost: 1,
		// HTTP/1.1, as the other clients.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}, Timeout: 30 * time.Second}
	request := func() {
		resp, err := client.Post(url, "application/octet-stream", bytes.NewReader(payload))
		if err != nil {
			fmt.Fprintln(os.Stderr, "goclient:", err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	request()
	start := time.Now()
	for i := 0; i < count; i++ {
		request()
	}
	fmt.Println("ns_per_request", time.Since(start).Nanoseconds()/int64(count))
	if len(os.Args) > 3 && os.Args[3] == "--hold" {
		fmt.Println("ready")
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
		<-stop
	}
}
