// goclient: a Go standard-library HTTPS client for kloak tests. Go's crypto/tls is hooked at
// crypto/tls.(*Conn).Write, so this program is how the Go hook is exercised end to end.
//
//	goclient -url URL [-header 'Name: value']... [-body STR] [-h2] [-conns N] [-urls URL2]
//
// Header values and the body may reference environment variables as $VAR or ${VAR} (the placeholder comes
// from the environment, as a workload would get it). The CA comes from $SSL_CERT_FILE. HTTP/1.1 unless
// -h2. -conns N makes N requests to URL, each on its own connection. -urls URL2 then makes one more request,
// to URL2, from the same process on a new connection while the earlier ones are still open (S2: a second
// connection to another host must get the placeholder, not the secret). Prints one line per request: "URL STATUS" (or "URL error: ..."), and exits
// non-zero if any request failed.
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

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	var headers headerList
	url := flag.String("url", "", "URL to request")
	second := flag.String("urls", "", "second URL, requested afterwards on a new connection")
	body := flag.String("body", "", "request body (POST when set)")
	h2 := flag.Bool("h2", false, "use HTTP/2")
	conns := flag.Int("conns", 1, "number of requests to -url, one connection each")
	timeout := flag.Duration("timeout", 30*time.Second, "per-request timeout")
	flag.Var(&headers, "header", "request header 'Name: value' (repeatable; $VAR expanded)")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "goclient: -url is required")
		os.Exit(2)
	}

	cfg := &tls.Config{}
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goclient:", err)
			os.Exit(2)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintln(os.Stderr, "goclient: no certificates in", f)
			os.Exit(2)
		}
		cfg.RootCAs = pool
	}
	// One Transport per request: each request gets its own connection, and earlier connections stay open
	// (idle, keep-alive) until the process exits, so a second connection is made while the first verified
	// one is still alive, which is the case S2 is about.
	newClient := func() *http.Client {
		tr := &http.Transport{TLSClientConfig: cfg}
		if *h2 {
			tr.ForceAttemptHTTP2 = true // a custom TLSClientConfig disables h2 unless forced
		} else {
			tr.ForceAttemptHTTP2 = false
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // never h2
		}
		return &http.Client{Transport: tr, Timeout: *timeout}
	}

	urls := []string{}
	for i := 0; i < *conns; i++ {
		urls = append(urls, *url)
	}
	if *second != "" {
		urls = append(urls, *second)
	}
	failed := false
	for _, u := range urls {
		if err := do(newClient(), u, headers, *body); err != nil {
			fmt.Printf("%s error: %v\n", u, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func do(client *http.Client, url string, headers []string, body string) error {
	method := http.MethodGet
	var rd io.Reader
	if body != "" {
		method = http.MethodPost
		rd = strings.NewReader(os.ExpandEnv(body))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return fmt.Errorf("bad header %q (want 'Name: value')", h)
		}
		req.Header.Add(strings.TrimSpace(name), os.ExpandEnv(strings.TrimSpace(value)))
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	fmt.Printf("%s %d %s\n", url, resp.StatusCode, resp.Proto)
	return nil
}
