// goclient sends HTTPS requests with Go's crypto/tls, for kloak's end-to-end tests.
//
//	goclient -url URL [-url URL2 ...] -header 'Name: value' [-body STR]
//
// Header values and the body expand $VARS from the environment, so the
// placeholder comes from where kloak put it. Each -url gets its own
// connection; HTTP/1.1 only (HTTP/2 is another issue's work).
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
		transport := &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool},
			ForceAttemptHTTP2: false,
			TLSNextProto:      map[string]func(string, *tls.Conn) http.RoundTripper{},
		}
		client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
		method, reader := "GET", io.Reader(nil)
		if *body != "" {
			method, reader = "POST", strings.NewReader(os.ExpandEnv(*body))
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
			fmt.Println(url, "error:", err)
			failed = true
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(url, resp.Status)
		transport.CloseIdleConnections()
	}
	if failed {
		os.Exit(1)
	}
}
