package main

import (
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// cmdEchoServer runs the benchmark backend: it upgrades every request, echoes
// every data message with its type, answers pings (gorilla's default ping
// handler) and completes the close handshake.
func cmdEchoServer(args []string) {
	fs := flag.NewFlagSet("echo-server", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:9001", "listen address")
	maxLife := fs.Duration("max-lifetime", 2*time.Hour, "exit after this long (safety bound)")
	_ = fs.Parse(args)

	up := websocket.Upgrader{
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	var active, total, withXFF atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte("echo backend\n"))
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		total.Add(1)
		if r.Header.Get("X-Forwarded-For") != "" {
			withXFF.Add(1)
		}
		active.Add(1)
		defer active.Add(-1)
		defer c.Close()
		if tc, ok := c.UnderlyingConn().(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		for {
			mt, r, err := c.NextReader()
			if err != nil {
				return
			}
			w, err := c.NextWriter(mt)
			if err != nil {
				return
			}
			// messageWriter implements io.ReaderFrom: the payload goes
			// through the connection's write buffer, no allocation.
			if _, err := io.Copy(w, r); err != nil {
				return
			}
			if err := w.Close(); err != nil {
				return
			}
		}
	})
	// /stats reports what the backend saw (plain HTTP, for sanity checks).
	mux.HandleFunc("/_stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"active":` + itoa(active.Load()) + `,"upgrades":` + itoa(total.Load()) +
			`,"with_x_forwarded_for":` + itoa(withXFF.Load()) + "}\n"))
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fatalf("listen %s: %v", *listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		select {
		case <-sig:
		case <-time.After(*maxLife):
		}
		os.Exit(0)
	}()
	logf("echo-server listening on %s", ln.Addr())
	_ = srv.Serve(ln)
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
