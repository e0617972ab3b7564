package main

import (
	"flag"
	"time"

	"github.com/gorilla/websocket"
)

// cmdWait retries a WebSocket dial plus one echoed message until it succeeds
// (exit 0) or --timeout passes (exit 1).
func cmdWait(args []string) {
	fs := flag.NewFlagSet("wait", flag.ExitOnError)
	target := fs.String("target", "", "ws:// URL")
	timeout := fs.Duration("timeout", 20*time.Second, "give up after this long")
	_ = fs.Parse(args)
	dialer := newDialer(nil, 1024)
	dialer.HandshakeTimeout = 2 * time.Second
	deadline := time.Now().Add(*timeout)
	var last error
	for time.Now().Before(deadline) {
		c, _, err := dialer.Dial(*target, nil)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if err = c.WriteMessage(websocket.TextMessage, []byte("ping?")); err == nil {
				_, _, err = c.ReadMessage()
			}
			c.Close()
			if err == nil {
				return
			}
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	fatalf("wait %s: not ready after %s: %v", *target, *timeout, last)
}
