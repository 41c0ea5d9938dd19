// Command gateway is the local stand-in for the production ingress: one port on 127.0.0.1,
// the Ingress's routes (routes.json, embedded), two backends.
//
//	gateway --port 8080 --buy 127.0.0.1:8091 --history 127.0.0.1:8092
//
// Like the ingress for host purchase.local it forwards method, request target (path and
// query, byte for byte), headers and body unchanged, drops hop-by-hop headers, sets
// X-Forwarded-For, keeps upstream connections alive and answers 502/504 as JSON when a
// backend is down or slow. Whatever it refuses itself (unknown methods, a malformed
// Content-Length or request line, oversized headers or bodies, a client that stalls) is a
// JSON error too. Only Go's standard library: requests are parsed with http.ReadRequest on
// each connection (net/http's server would answer malformed framing in plain text, not
// JSON), written upstream with Request.Write and answered from http.ReadResponse on the
// client connection's own upstream connections. devstack/gateway/__init__.py builds it once
// into the cache outside the clone and starts it; it stops on SIGTERM.
package main

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

//go:embed routes.json
var routesJSON []byte

const (
	maxForwardBody = 2 << 20
	maxHeaderBytes = 64 << 10
	// Below gunicorn's 2 s keep-alive, so an idle upstream connection is dropped here before
	// the backend closes it under a request.
	upstreamIdle = 1500 * time.Millisecond
)

var (
	upstreamTimeout = flag.Duration("upstream-timeout", 15*time.Second, "a backend that has not answered by then gets a 504")
	// A client that announces a body and stops sending (or idles on a kept-alive connection)
	// frees its connection after this long instead of holding it forever.
	clientTimeout    = flag.Duration("client-timeout", 60*time.Second, "a stalled client is dropped (or answered 408) after this")
	forwardedMethods = []string{"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
	// What each backend's routes allow: the Allow of a 405 for a method nothing forwards.
	allowed = map[string]string{"buy": "POST", "history": "GET, HEAD"}
	// Hop-by-hop (RFC 9110 7.6.1), plus Expect: the gateway answers 100-continue itself
	// and hands the backend the whole body.
	hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Proxy-Connection", "Te", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Expect"}
	errHeadersTooLarge = errors.New("request header fields too large")
)

type route struct{ prefix, backend string }

type gateway struct {
	routes   []route
	backends map[string]string // backend name -> host:port
}

func loadRoutes() []route {
	var doc struct {
		Routes [][2]string `json:"routes"`
	}
	if err := json.Unmarshal(routesJSON, &doc); err != nil {
		log.Fatalf("routes.json: %v", err)
	}
	routes := make([]route, len(doc.Routes))
	for i, r := range doc.Routes {
		routes[i] = route{r[0], r[1]}
	}
	return routes
}

// route is devstack.gateway.route: a prefix matches itself and what follows it after "/".
func (g *gateway) route(path string) string {
	for _, r := range g.routes {
		if path == r.prefix || (strings.HasPrefix(path, r.prefix) && path[len(r.prefix)] == '/') {
			return r.backend
		}
	}
	return ""
}

// rawPath is the request target's path exactly as the client sent it (still percent-encoded),
// which is what the routes match.
func rawPath(req *http.Request) string {
	target := req.RequestURI
	if !strings.HasPrefix(target, "/") { // absolute-form (or "*")
		return req.URL.EscapedPath()
	}
	if i := strings.IndexAny(target, "?#"); i >= 0 {
		return target[:i]
	}
	return target
}

// connReader caps how much one request's head may read from the connection.
type connReader struct {
	conn      net.Conn
	remaining int64
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.remaining <= 0 {
		return 0, errHeadersTooLarge
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.conn.Read(p)
	r.remaining -= int64(n)
	return n, err
}

func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// reply writes an answer of the gateway's own: JSON, with Connection: close when it ends
// the connection.
func reply(w *bufio.Writer, req *http.Request, status int, body map[string]string, closing bool, extra ...string) {
	payload, _ := json.Marshal(body)
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n",
		status, http.StatusText(status), len(payload), time.Now().UTC().Format(http.TimeFormat))
	for i := 0; i+1 < len(extra); i += 2 {
		fmt.Fprintf(w, "%s: %s\r\n", extra[i], extra[i+1])
	}
	if closing {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if req == nil || req.Method != "HEAD" {
		w.Write(payload)
	}
}

func problem(message, field string) map[string]string {
	if field == "" {
		return map[string]string{"error": message}
	}
	return map[string]string{"error": message, "field": field}
}

// refuseHead answers a request whose head could not be parsed; false when nothing should
// be answered (the client went away or stalled before sending a whole head).
func refuseHead(w *bufio.Writer, err error) bool {
	text := err.Error()
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isTimeout(err):
		return false
	case errors.Is(err, errHeadersTooLarge):
		reply(w, nil, 431, problem("request header fields too large", ""), true)
	case strings.Contains(text, "multiple Content-Length"):
		reply(w, nil, 400, problem("conflicting Content-Length headers", "Content-Length"), true)
	case strings.Contains(text, "Content-Length"):
		reply(w, nil, 400, problem("Content-Length must be a non-negative integer", "Content-Length"), true)
	case strings.Contains(text, "transfer encoding"):
		reply(w, nil, 501, problem("unsupported Transfer-Encoding", "Transfer-Encoding"), true)
	default:
		reply(w, nil, 400, problem("malformed request: "+strings.TrimPrefix(text, "net/http: "), ""), true)
	}
	return true
}

func (g *gateway) serve(conn net.Conn) {
	defer closeGently(conn)
	defer func() {
		if failure := recover(); failure != nil { // one broken connection, not the whole gateway
			log.Printf("connection from %s: %v", conn.RemoteAddr(), failure)
		}
	}()
	source := &connReader{conn: conn}
	r := bufio.NewReaderSize(source, 8<<10)
	w := bufio.NewWriterSize(conn, 8<<10)
	client, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
	pool := upstreams{}
	defer pool.close()
	for {
		conn.SetReadDeadline(time.Now().Add(*clientTimeout))
		source.remaining = maxHeaderBytes + 4096
		req, err := http.ReadRequest(r)
		if err != nil {
			if refuseHead(w, err) {
				w.Flush()
			}
			return
		}
		source.remaining = math.MaxInt64
		keep := g.handle(conn, w, req, client, pool) && !req.Close
		if w.Flush() != nil || !keep {
			return
		}
	}
}

// closeGently half-closes and reads what the client still sends (briefly) before closing:
// closing with unread bytes would reset the connection and could discard the answer
// (a refusal, say) before the client has read it.
func closeGently(conn net.Conn) {
	if tcp, ok := conn.(*net.TCPConn); ok && tcp.CloseWrite() == nil {
		tcp.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		io.Copy(io.Discard, io.LimitReader(tcp, 256<<10))
	}
	conn.Close()
}

// handle answers one request; false when the connection cannot carry another.
func (g *gateway) handle(conn net.Conn, w *bufio.Writer, req *http.Request, client string, pool upstreams) bool {
	path := rawPath(req)
	backend := g.route(path)
	bodyUnread := req.ContentLength != 0 // the body's bytes are still on the connection
	known := false
	for _, m := range forwardedMethods {
		known = known || m == req.Method
	}
	switch {
	case !known:
		allow, ok := allowed[backend]
		if !ok {
			allow = strings.Join(forwardedMethods, ", ")
		}
		reply(w, req, 405, problem("method "+req.Method+" not allowed", ""), true, "Allow", allow)
		return false
	case path == "/healthz":
		reply(w, req, 200, map[string]string{"status": "ok"}, bodyUnread)
		return !bodyUnread
	case backend == "":
		reply(w, req, 404, problem("no route for this path", ""), bodyUnread)
		return !bodyUnread
	case len(req.TransferEncoding) > 0:
		reply(w, req, 411, problem("send a Content-Length; chunked bodies are not forwarded", ""), true)
		return false
	case req.ContentLength > maxForwardBody:
		reply(w, req, 413, problem("request body too large", "body"), true)
		return false
	}
	var body []byte
	if req.ContentLength > 0 {
		if strings.EqualFold(req.Header.Get("Expect"), "100-continue") && req.ProtoAtLeast(1, 1) {
			w.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if w.Flush() != nil {
				return false
			}
		}
		conn.SetReadDeadline(time.Now().Add(*clientTimeout))
		body = make([]byte, req.ContentLength)
		if _, err := io.ReadFull(req.Body, body); err != nil {
			if isTimeout(err) {
				reply(w, req, 408, problem("request body not received in time", "body"), true)
			} else {
				reply(w, req, 400, problem("request body shorter than its Content-Length", "body"), true)
			}
			return false
		}
	}
	return g.forward(w, req, backend, body, client, pool)
}

func (g *gateway) forward(w *bufio.Writer, req *http.Request, backend string, body []byte, client string, pool upstreams) bool {
	header := req.Header
	for _, name := range strings.Split(header.Get("Connection"), ",") {
		if name = strings.TrimSpace(name); name != "" {
			header.Del(name)
		}
	}
	for _, name := range hopByHop {
		delete(header, name)
	}
	if _, ok := header["User-Agent"]; !ok {
		header["User-Agent"] = []string{""} // present but empty: Go adds none of its own
	}
	header["X-Forwarded-For"] = []string{client}
	out := &http.Request{
		Method: req.Method,
		// Opaque: the request target goes out byte for byte as the client sent it.
		URL:           &url.URL{Scheme: "http", Host: g.backends[backend], Opaque: req.RequestURI},
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Host:          req.Host,
		ContentLength: int64(len(body)),
	}
	resp, payload, err := g.exchange(pool, backend, out, body)
	if err != nil {
		if isTimeout(err) {
			reply(w, req, 504, problem(backend+" did not answer in time", ""), false)
		} else {
			reply(w, req, 502, problem(backend+" is unreachable", ""), false)
		}
		return true
	}
	w.WriteString("HTTP/1.1 ")
	w.WriteString(resp.Status)
	w.WriteString("\r\n")
	for name, values := range resp.Header {
		if name == "Content-Length" || isHopByHop(name) {
			continue
		}
		for _, value := range values {
			w.WriteString(name)
			w.WriteString(": ")
			w.WriteString(value)
			w.WriteString("\r\n")
		}
	}
	switch {
	case resp.StatusCode == 204 || resp.StatusCode == 304:
	case req.Method == "HEAD" && resp.ContentLength >= 0:
		w.WriteString("Content-Length: " + strconv.FormatInt(resp.ContentLength, 10) + "\r\n")
	default:
		w.WriteString("Content-Length: " + strconv.Itoa(len(payload)) + "\r\n")
	}
	if req.Close {
		w.WriteString("Connection: close\r\n")
	} else if !req.ProtoAtLeast(1, 1) {
		w.WriteString("Connection: keep-alive\r\n")
	}
	w.WriteString("\r\n")
	if req.Method != "HEAD" {
		w.Write(payload)
	}
	return true
}

// upstream is one kept-alive connection to a backend. Each client connection has its own
// (upstreams), used only by that connection's goroutine, so a request and its answer never
// change goroutine or wait on a shared pool: at c=1 that halves the gateway's CPU per
// request against an http.Transport.
type upstream struct {
	conn     net.Conn
	r        *bufio.Reader
	w        *bufio.Writer
	used     bool // it has carried an answer: a failure may be the backend closing it while idle
	lastUsed time.Time
}

type upstreams map[string]*upstream

func (pool upstreams) close() {
	for _, up := range pool {
		up.conn.Close()
	}
}

// exchange sends out (with body) to the backend and reads the whole answer. A kept-alive
// connection that fails is retried once on a fresh one, as the backend may have closed it.
func (g *gateway) exchange(pool upstreams, backend string, out *http.Request, body []byte) (*http.Response, []byte, error) {
	for attempt := 1; ; attempt++ {
		up := pool[backend]
		if up != nil && time.Since(up.lastUsed) > upstreamIdle {
			up.conn.Close()
			up = nil
		}
		if up == nil {
			conn, err := net.DialTimeout("tcp", g.backends[backend], *upstreamTimeout)
			if err != nil {
				delete(pool, backend)
				return nil, nil, err
			}
			up = &upstream{conn: conn, r: bufio.NewReaderSize(conn, 8<<10), w: bufio.NewWriterSize(conn, 8<<10)}
			pool[backend] = up
		}
		resp, payload, err := up.roundTrip(out, body)
		if err == nil && !resp.Close {
			up.used, up.lastUsed = true, time.Now()
			return resp, payload, nil
		}
		up.conn.Close()
		delete(pool, backend)
		if err == nil || isTimeout(err) || !up.used || attempt == 2 {
			return resp, payload, err
		}
	}
}

func (up *upstream) roundTrip(out *http.Request, body []byte) (*http.Response, []byte, error) {
	up.conn.SetDeadline(time.Now().Add(*upstreamTimeout))
	if body != nil {
		out.Body = io.NopCloser(bytes.NewReader(body))
	}
	if err := out.Write(up.w); err != nil {
		return nil, nil, err
	}
	if err := up.w.Flush(); err != nil {
		return nil, nil, err
	}
	for informational := 0; ; informational++ {
		resp, err := http.ReadResponse(up.r, out)
		if err != nil {
			return nil, nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == 101 || informational == 5 {
			payload, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp, payload, err
		}
		// 1xx (a 100 Continue the backend sends anyway): the final answer follows.
	}
}

func isHopByHop(name string) bool {
	for _, h := range hopByHop {
		if name == h {
			return true
		}
	}
	return false
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("gateway: ")
	port := flag.Int("port", 8080, "port to listen on (127.0.0.1 only)")
	buy := flag.String("buy", "", "host:port of the buy function")
	history := flag.String("history", "", "host:port of the history function")
	flag.Parse()
	if *buy == "" || *history == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	g := &gateway{routes: loadRoutes(), backends: map[string]string{"buy": *buy, "history": *history}}
	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port)))
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s: buy %s, history %s", listener.Addr(), *buy, *history)
	for {
		conn, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Printf("accept: %v", err) // e.g. out of file descriptors: back off a little
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go g.serve(conn)
	}
}
