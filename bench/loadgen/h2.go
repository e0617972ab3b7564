package main

// A lean HTTP/2 client for WebSockets over HTTP/2 (RFC 8441): cleartext HTTP/2
// with prior knowledge (h2c) on one TCP connection, each tunnel an extended
// CONNECT stream (`:protocol websocket`) carrying RFC 6455 frames in DATA frames.
// Built on x/net/http2's Framer and hpack, not its Transport: one reader and one
// writer goroutine per connection, flow control done here, writes batched per
// wake-up like a browser's, so the client costs little CPU next to the proxy.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// What this client lets the server send before it says "more": per stream and
	// for the connection. Updates go out when half is used.
	h2ClientStreamWindow = 1 << 20
	h2ClientConnWindow   = 1 << 30
)

var h2Debug = os.Getenv("LOADGEN_H2_DEBUG") != ""

type h2Write struct {
	open   *h2Stream // HEADERS opening this stream (its ID is assigned by the writer)
	stream uint32
	data   []byte
	end    bool
	ping   *[8]byte // PING ACK
	ack    bool     // SETTINGS ACK
	wuID   uint32   // WINDOW_UPDATE
	wuInc  uint32
	rst    bool // RST_STREAM(CANCEL) on stream
}

type h2Conn struct {
	conn      net.Conn
	authority string
	wq        chan h2Write

	mu         sync.Mutex
	cond       *sync.Cond
	streams    map[uint32]*h2Stream
	nextID     uint32
	active     int
	maxStreams int
	connWin    int64 // what we may still send on the connection
	initWin    int64 // the server's SETTINGS_INITIAL_WINDOW_SIZE
	extConnect bool
	settled    chan struct{}
	err        error
	recvConn   int64 // received since the last connection WINDOW_UPDATE
	done       chan struct{}
}

type h2Stream struct {
	c       *h2Conn
	id      uint32
	path    string
	status  chan int // the response's :status, once
	sendWin int64
	recv    int64 // received since the last stream WINDOW_UPDATE
	buf     []byte
	// onMessage gets each complete WebSocket message from the server (opcode,
	// payload); called on the connection's reader goroutine: it must not block.
	onMessage func(op byte, payload []byte)
	ended     chan struct{} // the server ended the stream (END_STREAM or RST_STREAM)
	endedOnce sync.Once
	localEnd  bool
	remoteEnd bool
	released  bool
}

// dialH2 opens an h2c connection (prior knowledge) from source (nil: any) and
// waits for the server's SETTINGS; extended CONNECT must be advertised.
func dialH2(addr string, source net.IP) (*h2Conn, error) {
	nd := net.Dialer{Timeout: 10 * time.Second}
	if source != nil {
		nd.LocalAddr = &net.TCPAddr{IP: source}
		nd.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	nc, err := nd.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = nc.(*net.TCPConn).SetNoDelay(true)
	c := &h2Conn{
		conn: nc, authority: addr, wq: make(chan h2Write, 1024),
		streams: map[uint32]*h2Stream{}, nextID: 1, maxStreams: 100,
		connWin: 65535, initWin: 65535, settled: make(chan struct{}), done: make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	bw := bufio.NewWriterSize(nc, 64<<10)
	fr := http2.NewFramer(bw, bufio.NewReaderSize(nc, 64<<10))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := bw.WriteString(http2.ClientPreface); err != nil {
		nc.Close()
		return nil, err
	}
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2ClientStreamWindow})
	_ = fr.WriteWindowUpdate(0, h2ClientConnWindow-65535)
	if err := bw.Flush(); err != nil {
		nc.Close()
		return nil, err
	}
	go c.writer(fr, bw)
	go c.reader(fr)
	select {
	case <-c.settled:
	case <-c.done:
		return nil, c.failure()
	case <-time.After(10 * time.Second):
		c.Close()
		return nil, errors.New("h2: no SETTINGS from the server within 10s")
	}
	c.mu.Lock()
	ext := c.extConnect
	c.mu.Unlock()
	if !ext {
		c.Close()
		return nil, errors.New("h2: the server does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL")
	}
	return c, nil
}

func (c *h2Conn) Close() { _ = c.conn.Close() }

func (c *h2Conn) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		return errors.New("h2: connection closed")
	}
	return c.err
}

func (c *h2Conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	streams := c.streams
	c.streams = map[uint32]*h2Stream{}
	c.mu.Unlock()
	c.cond.Broadcast()
	for _, s := range streams {
		s.endedOnce.Do(func() { close(s.ended) })
	}
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	_ = c.conn.Close()
}

func (c *h2Conn) send(w h2Write) {
	select {
	case c.wq <- w:
	case <-c.done:
	}
}

// writer writes queued frames and flushes when the queue runs dry (at most 256
// frames per flush): one syscall carries many messages under load.
func (c *h2Conn) writer(fr *http2.Framer, bw *bufio.Writer) {
	var hbuf bytes.Buffer
	henc := hpack.NewEncoder(&hbuf)
	write := func(w h2Write) error {
		if h2Debug {
			logf("h2 -> %+v", w)
		}
		switch {
		case w.open != nil:
			s := w.open
			c.mu.Lock()
			if c.err != nil {
				c.mu.Unlock()
				return c.err
			}
			s.id = c.nextID
			c.nextID += 2
			c.streams[s.id] = s
			c.mu.Unlock()
			hbuf.Reset()
			for _, f := range [][2]string{{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "http"},
				{":path", s.path}, {":authority", c.authority}, {"sec-websocket-version", "13"}} {
				_ = henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: hbuf.Bytes(), EndHeaders: true})
		case w.ping != nil:
			return fr.WritePing(true, *w.ping)
		case w.ack:
			return fr.WriteSettingsAck()
		case w.wuInc > 0:
			return fr.WriteWindowUpdate(w.wuID, w.wuInc)
		case w.rst:
			return fr.WriteRSTStream(w.stream, http2.ErrCodeCancel)
		default:
			return fr.WriteData(w.stream, w.end, w.data)
		}
	}
	for {
		var w h2Write
		select {
		case w = <-c.wq:
		case <-c.done:
			return
		}
		if err := write(w); err != nil {
			c.fail(err)
			return
		}
	batch:
		for i := 0; i < 256; i++ {
			select {
			case w = <-c.wq:
				if err := write(w); err != nil {
					c.fail(err)
					return
				}
			default:
				break batch
			}
		}
		if err := bw.Flush(); err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *h2Conn) reader(fr *http2.Framer) {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			c.fail(err)
			return
		}
		if h2Debug {
			logf("h2 <- %v", f)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			c.mu.Lock()
			_ = f.ForeachSetting(func(s http2.Setting) error {
				switch s.ID {
				case http2.SettingInitialWindowSize:
					delta := int64(s.Val) - c.initWin
					c.initWin = int64(s.Val)
					for _, st := range c.streams {
						st.sendWin += delta
					}
				case http2.SettingMaxConcurrentStreams:
					c.maxStreams = int(s.Val)
				case http2.SettingEnableConnectProtocol:
					c.extConnect = s.Val == 1
				}
				return nil
			})
			first := false
			select {
			case <-c.settled:
			default:
				first = true
			}
			c.mu.Unlock()
			c.cond.Broadcast()
			c.send(h2Write{ack: true})
			if first {
				close(c.settled)
			}
		case *http2.MetaHeadersFrame:
			s := c.stream(f.StreamID)
			if s == nil {
				continue
			}
			code, _ := strconv.Atoi(f.PseudoValue("status"))
			select {
			case s.status <- code:
			default:
			}
			if f.StreamEnded() {
				c.remoteEnded(s)
			}
		case *http2.DataFrame:
			n := int64(f.Length)
			c.mu.Lock()
			c.recvConn += n
			connInc := int64(0)
			if c.recvConn >= h2ClientConnWindow/2 {
				connInc, c.recvConn = c.recvConn, 0
			}
			c.mu.Unlock()
			if connInc > 0 {
				c.send(h2Write{wuID: 0, wuInc: uint32(connInc)})
			}
			s := c.stream(f.StreamID)
			if s == nil {
				continue
			}
			s.recv += n
			if s.recv >= h2ClientStreamWindow/2 {
				c.send(h2Write{wuID: s.id, wuInc: uint32(s.recv)})
				s.recv = 0
			}
			s.feed(f.Data())
			if f.StreamEnded() {
				c.remoteEnded(s)
			}
		case *http2.WindowUpdateFrame:
			c.mu.Lock()
			if f.StreamID == 0 {
				c.connWin += int64(f.Increment)
			} else if s := c.streams[f.StreamID]; s != nil {
				s.sendWin += int64(f.Increment)
			}
			c.mu.Unlock()
			c.cond.Broadcast()
		case *http2.PingFrame:
			if !f.IsAck() {
				d := f.Data
				c.send(h2Write{ping: &d})
			}
		case *http2.RSTStreamFrame:
			if s := c.stream(f.StreamID); s != nil {
				c.mu.Lock()
				s.localEnd = true
				c.mu.Unlock()
				c.remoteEnded(s)
			}
		case *http2.GoAwayFrame:
			c.mu.Lock()
			if c.err == nil {
				c.err = fmt.Errorf("h2: GOAWAY %v", f.ErrCode)
			}
			c.mu.Unlock()
		}
	}
}

func (c *h2Conn) stream(id uint32) *h2Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// remoteEnded: the server ended its side; the stream is gone once ours ended too.
func (c *h2Conn) remoteEnded(s *h2Stream) {
	c.mu.Lock()
	s.remoteEnd = true
	c.releaseLocked(s)
	c.mu.Unlock()
	s.endedOnce.Do(func() { close(s.ended) })
}

func (c *h2Conn) releaseLocked(s *h2Stream) {
	if s.localEnd && s.remoteEnd && !s.released {
		s.released = true
		delete(c.streams, s.id)
		c.active--
		c.cond.Broadcast()
	}
}

// openTunnel sends an extended CONNECT for path and waits for the server's 200
// (bounded by timeout). Waits for a free stream slot first.
func (c *h2Conn) openTunnel(path string, timeout time.Duration, onMessage func(op byte, payload []byte)) (*h2Stream, error) {
	c.mu.Lock()
	for c.active >= c.maxStreams && c.err == nil {
		c.cond.Wait()
	}
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.active++
	s := &h2Stream{c: c, path: path, status: make(chan int, 1), sendWin: c.initWin,
		onMessage: onMessage, ended: make(chan struct{})}
	c.mu.Unlock()
	c.send(h2Write{open: s})
	select {
	case code := <-s.status:
		if code != 200 {
			s.reset()
			return nil, fmt.Errorf("h2: extended CONNECT answered %d", code)
		}
		return s, nil
	case <-s.ended:
		return nil, fmt.Errorf("h2: stream ended before a response: %v", c.failure())
	case <-time.After(timeout):
		s.reset()
		return nil, errors.New("h2: no response to the extended CONNECT in time")
	}
}

// reset forgets a stream whose opening failed (the server's RST or END_STREAM
// frees it there; this frees our slot).
func (s *h2Stream) reset() {
	c := s.c
	c.mu.Lock()
	s.localEnd, s.remoteEnd = true, true
	if s.id != 0 {
		c.releaseLocked(s)
	} else if !s.released {
		s.released = true
		c.active--
	}
	c.mu.Unlock()
}

// cancel ends our side of a stream the way a browser does once its WebSocket
// closed: RST_STREAM(CANCEL), unless the stream is already over for us (no frame
// on a stream the server reset).
func (s *h2Stream) cancel() {
	c := s.c
	c.mu.Lock()
	mine := !s.localEnd
	s.localEnd = true
	c.releaseLocked(s)
	c.mu.Unlock()
	if mine {
		c.send(h2Write{stream: s.id, rst: true})
	}
}

// write sends b (WebSocket frames) on the stream once flow control allows it.
func (s *h2Stream) write(b []byte, end bool) error {
	c := s.c
	n := int64(len(b))
	c.mu.Lock()
	for (c.connWin < n || s.sendWin < n) && c.err == nil && !s.remoteEnd {
		c.cond.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if s.remoteEnd && !end {
		c.mu.Unlock()
		return errors.New("h2: the server ended the stream")
	}
	c.connWin -= n
	s.sendWin -= n
	if end {
		s.localEnd = true
		c.releaseLocked(s)
	}
	c.mu.Unlock()
	c.send(h2Write{stream: s.id, data: b, end: end})
	return nil
}

// feed parses the server's WebSocket frames (unmasked) out of DATA payloads.
func (s *h2Stream) feed(p []byte) {
	if len(s.buf) == 0 {
		p = s.parse(p)
		if len(p) > 0 {
			s.buf = append(s.buf[:0], p...)
		}
		return
	}
	s.buf = append(s.buf, p...)
	rest := s.parse(s.buf)
	s.buf = append(s.buf[:0], rest...)
}

func (s *h2Stream) parse(p []byte) []byte {
	for len(p) >= 2 {
		op := p[0] & 0x0f
		n := int(p[1] & 0x7f)
		hl := 2
		switch n {
		case 126:
			if len(p) < 4 {
				return p
			}
			n = int(binary.BigEndian.Uint16(p[2:]))
			hl = 4
		case 127:
			if len(p) < 10 {
				return p
			}
			n = int(binary.BigEndian.Uint64(p[2:]))
			hl = 10
		}
		if p[1]&0x80 != 0 {
			hl += 4 // a server never masks; tolerate it anyway
		}
		if len(p) < hl+n {
			return p
		}
		payload := p[hl : hl+n]
		if op == 0x9 { // ping: answer with a pong (off the reader: it may wait for a window)
			pong := wsFrame(0xA, payload)
			go func() { _ = s.write(pong, false) }()
		} else if s.onMessage != nil {
			s.onMessage(op, payload)
		}
		p = p[hl+n:]
	}
	return p
}

// wsFrame builds a masked client frame (FIN set) for opcode and payload.
func wsFrame(op byte, payload []byte) []byte {
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	var h []byte
	switch n := len(payload); {
	case n < 126:
		h = []byte{0x80 | op, 0x80 | byte(n)}
	case n < 1<<16:
		h = []byte{0x80 | op, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		h = make([]byte, 10)
		h[0], h[1] = 0x80|op, 0x80|127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
	}
	out := make([]byte, 0, len(h)+4+len(payload))
	out = append(out, h...)
	out = append(out, mask[:]...)
	for i, b := range payload {
		out = append(out, b^mask[i%4])
	}
	return out
}

// closeFrame is a masked Close with status 1000.
func closeFrame() []byte { return wsFrame(0x8, []byte{0x03, 0xe8}) }
