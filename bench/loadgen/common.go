package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// raiseNofile lifts RLIMIT_NOFILE's soft limit to the hard limit.
func raiseNofile() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// parseSources turns "127.0.0.2-9" or "127.0.0.2,127.0.0.3" into a list of IPs.
// An empty string means "let the kernel choose".
func parseSources(s string) ([]net.IP, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []net.IP
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if i := strings.LastIndex(part, "-"); i > 0 {
			base := net.ParseIP(part[:i]).To4()
			if base == nil {
				return nil, fmt.Errorf("bad source range %q", part)
			}
			last, err := strconv.Atoi(part[i+1:])
			if err != nil || last < int(base[3]) || last > 255 {
				return nil, fmt.Errorf("bad source range %q", part)
			}
			for o := int(base[3]); o <= last; o++ {
				ip := net.IPv4(base[0], base[1], base[2], byte(o)).To4()
				out = append(out, ip)
			}
			continue
		}
		ip := net.ParseIP(part)
		if ip == nil {
			return nil, fmt.Errorf("bad source %q", part)
		}
		out = append(out, ip)
	}
	return out, nil
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT: bind() to a source address
// defers port choice to connect(), which then picks per 4-tuple, so 8 source
// addresses give 8x the ephemeral ports and TIME_WAIT reuse works.
const ipBindAddressNoPort = 24

var srcCounter atomic.Uint64

// newDialer returns a websocket dialer that spreads connections over sources
// round-robin.
func newDialer(sources []net.IP, bufSize int) *websocket.Dialer {
	d := &websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   bufSize,
		WriteBufferSize:  bufSize,
	}
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := net.Dialer{Timeout: 10 * time.Second}
		if len(sources) > 0 {
			ip := sources[srcCounter.Add(1)%uint64(len(sources))]
			nd.LocalAddr = &net.TCPAddr{IP: ip}
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
		c, err := nd.DialContext(ctx, network, addr)
		if err == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
		}
		return c, err
	}
	return d
}

// ---- /proc accounting of a process tree ----

type procStat struct {
	PIDs    []int   `json:"pids"`
	RSSKB   int64   `json:"rss_kb"`     // VmRSS summed
	AnonKB  int64   `json:"anon_kb"`    // smaps_rollup Anonymous summed
	PrivKB  int64   `json:"private_kb"` // smaps_rollup Private_Clean+Private_Dirty summed
	PssKB   int64   `json:"pss_kb"`     // smaps_rollup Pss summed
	CPUSec  float64 `json:"cpu_s"`      // utime+stime summed, seconds
	Threads int64   `json:"threads"`
	// MachineBusyS is the whole machine's non-idle CPU time (/proc/stat), to
	// show how much else (client, backend, anything foreign) was running.
	MachineBusyS float64 `json:"machine_busy_s"`
}

const clkTck = 100.0 // USER_HZ, fixed at 100 on Linux

func readPPid(pid int) (int, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(f[1])
	return pp, err == nil
}

// treePIDs returns root and all its descendants.
func treePIDs(root int) []int {
	ents, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := readPPid(pid); ok {
			children[pp] = append(children[pp], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	sort.Ints(out)
	return out
}

func readProcTree(root int) (procStat, error) {
	var ps procStat
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", root)); err != nil {
		return ps, fmt.Errorf("process %d: %w", root, err)
	}
	ps.PIDs = treePIDs(root)
	ps.MachineBusyS = machineBusy()
	for _, pid := range ps.PIDs {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			s := string(b)
			i := strings.LastIndexByte(s, ')')
			f := strings.Fields(s[i+1:])
			// after ')': state(3) ppid(4) ... utime(14) stime(15) -> indices 11,12; num_threads(20) -> 17
			if len(f) > 17 {
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				nt, _ := strconv.ParseInt(f[17], 10, 64)
				ps.CPUSec += float64(ut+st) / clkTck
				ps.Threads += nt
			}
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(line, "VmRSS:") {
					ps.RSSKB += kbField(line)
				}
			}
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				switch {
				case strings.HasPrefix(line, "Anonymous:"):
					ps.AnonKB += kbField(line)
				case strings.HasPrefix(line, "Private_Clean:"), strings.HasPrefix(line, "Private_Dirty:"):
					ps.PrivKB += kbField(line)
				case strings.HasPrefix(line, "Pss:"):
					ps.PssKB += kbField(line)
				}
			}
		}
	}
	return ps, nil
}

func kbField(line string) int64 {
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0
	}
	v, _ := strconv.ParseInt(f[1], 10, 64)
	return v
}

// ---- misc ----

func emitJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "  [loadgen] "+format+"\n", a...)
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", a...)
	os.Exit(1)
}

// errSampler keeps the first few distinct error strings.
type errSampler struct {
	n    atomic.Int64
	seen chan string
}

func newErrSampler() *errSampler { return &errSampler{seen: make(chan string, 5)} }

func (e *errSampler) add(err error) {
	e.n.Add(1)
	select {
	case e.seen <- err.Error():
	default:
	}
}

func (e *errSampler) samples() []string {
	var out []string
	for {
		select {
		case s := <-e.seen:
			out = append(out, s)
		default:
			return out
		}
	}
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	idx := int(float64(len(sorted))*p+0.999999) - 1
	if idx < 0 {
		idx = 0
	}
	if idx >= len(sorted) {
		idx = len(sorted) - 1
	}
	return float64(sorted[idx]) / float64(time.Microsecond)
}

// machineBusy returns the machine's non-idle CPU seconds since boot.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 || i == 7 { // idle, iowait, steal (the hypervisor's, not ours)
			continue
		}
		x, _ := strconv.ParseInt(v, 10, 64)
		busy += x
	}
	return float64(busy) / clkTck
}

// oursCPU is the CPU seconds of this process plus the backend (if known).
func oursCPU(backendPID int) float64 {
	var t float64
	if ps, err := readProcTree(os.Getpid()); err == nil {
		t += ps.CPUSec
	}
	if backendPID > 0 {
		if ps, err := readProcTree(backendPID); err == nil {
			t += ps.CPUSec
		}
	}
	return t
}
