// goclient sends HTTPS requests with Go's crypto/tls, for kloak's end-to-end tests.
//
//	goclient -url URL [-url URL2 ...] -header 'Name: value' [-body STR] [-h2] [-repeat N]
//
// Header values and the body expand $VARS from the environment, so the
// placeholder comes from where kloak put it. Each -url gets its own
// connection, and -repeat sends N requests on it (HPACK indexes a header
// sent twice on one HTTP/2 connection). HTTP/1.1 unless -h2: then Go's
// default HTTP/2 client, negotiated by ALPN, and any other protocol fails.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var urls, headers list
	flag.Var(&urls, "url", "URL to request (repeatable: one connection each)")
	flag.Var(&headers, "header", "header 'Name: value' ($VAR expanded)")
	body := flag.String("body", "", "request body ($VAR expanded); POST when set")
	h2 := flag.Bool("h2", false, "HTTP/2 by ALPN (Go's default client); fail on anything else")
	repeat := flag.Int("repeat", 1, "requests per URL, all on the same connection")
	tls12 := flag.Bool("tls12", false, "TLS 1.2 at most")
	flag.Parse()
	pool := x509.NewCertPool()
	if ca := os.Getenv("SSL_CERT_FILE"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goclient:", err)
			os.Exit(2)
		}
		pool.AppendCertsFromPEM(pem)
	}
	failed := false
	for _, url := range urls {
		config := &tls.Config{RootCAs: pool}
		if *tls12 {
			config.MaxVersion = tls.VersionTLS12
		}
		transport := &http.Transport{TLSClientConfig: config}
		if *h2 {
			// A custom TLSClientConfig turns HTTP/2 off unless asked for; a nil
			// TLSNextProto keeps the default h2 upgrade.
			transport.ForceAttemptHTTP2 = true
		} else {
			transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
		for i := 0; i < *repeat; i++ {
			if err := request(client, url, headers, *body, *h2); err != nil {
				fmt.Println(url, "error:", err)
				failed = true
				break
			}
		}
		transport.CloseIdleConnections()
	}
	if failed {
		os.Exit(1)
	}
}

// request sends one request and reads the whole response, so the connection
// is reused by the next one.
func request(client *http.Client, url string, headers list, body string, h2 bool) error {
	method, reader := "GET", io.Reader(nil)
	if body != "" {
		method, reader = "POST", strings.NewReader(os.ExpandEnv(body))
	}
	req, err := http.NewRequest(method, url, reader)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(2)
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(name), os.ExpandEnv(strings.TrimSpace(value)))
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if h2 && resp.Proto != "HTTP/2.0" {
		return fmt.Errorf("got %s, want HTTP/2.0", resp.Proto)
	}
	fmt.Println(url, resp.Proto, resp.Status)
	return nil
}
