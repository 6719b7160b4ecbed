package audit

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Syslog is an exporter sink sending each record as an RFC 5424 message over
// TLS (RFC 5425: octet-counted frames, port 6514 by default), the transport
// IHE ATNA specifies for audit messages. The record's fields travel as
// structured data; the message text is the record as a JSON line (the same
// as the jsonl exporter's), so a SIEM can parse either.
//
// TLS gives no application acknowledgement: a connection that breaks can
// take records already written with it. So after a failure the sink asks
// for everything it wrote on that connection in the last inFlight period to
// be sent again (at least once, never lost).
type Syslog struct {
	SyslogFormat
	Address string
	TLS     *tls.Config // ServerName, RootCAs, optional client Certificates
	Timeout time.Duration

	mu     sync.Mutex
	conn   *tls.Conn
	w      *bufio.Writer
	sent   []sentBatch // batches written on conn, oldest first
	rewind int64
}

// SyslogFormat renders records as RFC 5424 messages.
type SyslogFormat struct {
	Hostname string // default: os.Hostname
	AppName  string // default: matrix-hipaa
	SDID     string // structured data ID, name@<IANA enterprise number>
	ProcID   string // default: this process's ID

	buf, lineBuf []byte
}

type sentBatch struct {
	first int64
	at    time.Time
}

// inFlight is how long a record written to a TLS connection is taken to be
// possibly still in flight, and is sent again if the connection breaks.
const inFlight = 10 * time.Second

// DefaultSDID is the structured data ID used unless configured. 32473 is the
// enterprise number RFC 5612 sets aside for documentation: set your
// organisation's own in audit.exporters[].sd_id.
const DefaultSDID = "matrixhipaa@32473"

func (s *Syslog) dial(ctx context.Context) error {
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}, Config: s.TLS}
	c, err := d.DialContext(ctx, "tcp", s.Address)
	if err != nil {
		return fmt.Errorf("syslog %s: %w", s.Address, err)
	}
	s.conn, s.w, s.sent = c.(*tls.Conn), bufio.NewWriterSize(c, 64<<10), nil
	return nil
}

// alive reports whether the peer has not closed the connection, by a read
// that would block on a healthy one (a syslog server never writes).
func (s *Syslog) alive() bool {
	s.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	var b [1]byte
	_, err := s.conn.Read(b[:])
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *Syslog) drop() {
	if s.conn != nil {
		s.conn.Close()
	}
	s.conn, s.w = nil, nil
}

func (s *Syslog) Deliver(ctx context.Context, recs []Stored) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.alive() {
		// Closed by the peer since the last batch: what was written then
		// may not have been read.
		s.fail()
	}
	if s.conn == nil {
		if err := s.dial(ctx); err != nil {
			return err
		}
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	s.conn.SetWriteDeadline(time.Now().Add(timeout))
	now := time.Now()
	s.sent = append(s.sent, sentBatch{recs[0].Seq, now})
	for i := range recs {
		msg, err := s.Format(&recs[i])
		if err != nil {
			return err
		}
		s.w.WriteString(strconv.Itoa(len(msg)))
		s.w.WriteByte(' ')
		s.w.Write(msg)
	}
	if err := s.w.Flush(); err != nil {
		s.fail()
		return fmt.Errorf("syslog %s: %w", s.Address, err)
	}
	// Forget batches old enough to have been read.
	for len(s.sent) > 1 && now.Sub(s.sent[0].at) > inFlight {
		s.sent = s.sent[1:]
	}
	return nil
}

// fail drops the connection and notes where delivery must start again.
func (s *Syslog) fail() {
	if len(s.sent) > 0 {
		from := s.sent[0].first
		for _, b := range s.sent {
			if time.Since(b.at) <= inFlight {
				from = b.first
				break
			}
		}
		if s.rewind == 0 || from < s.rewind {
			s.rewind = from
		}
	}
	s.sent = nil
	s.drop()
}

func (s *Syslog) Rewind() (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	from := s.rewind
	s.rewind = 0
	return from, from > 0
}

func (s *Syslog) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop()
	return nil
}

// Facility 10 (security/authorization), as IHE ATNA uses; severity notice,
// or warning for a failure outcome.
const (
	priNotice  = 10*8 + 5
	priWarning = 10*8 + 4
)

// Format renders one RFC 5424 message (without framing). The returned
// slice is reused by the next call.
func (s *SyslogFormat) Format(st *Stored) ([]byte, error) {
	if s.ProcID == "" {
		s.ProcID = strconv.Itoa(os.Getpid())
	}
	r, err := st.Fields()
	if err != nil {
		return nil, err
	}
	host := s.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	app := s.AppName
	if app == "" {
		app = "matrix-hipaa"
	}
	sdid := s.SDID
	if sdid == "" {
		sdid = DefaultSDID
	}
	pri := priNotice
	if r.Outcome == OutcomeFailure {
		pri = priWarning
	}
	b := s.buf[:0]
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(pri), 10)
	b = append(b, ">1 "...)
	b = st.Time().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, ' ')
	b = append(b, headerField(host, 255)...)
	b = append(b, ' ')
	b = append(b, headerField(app, 48)...)
	b = append(b, ' ')
	b = append(b, headerField(s.ProcID, 128)...)
	b = append(b, ' ')
	b = append(b, headerField(r.Type, 32)...)
	b = append(b, " ["...)
	b = append(b, sdid...)
	param := func(name, val string) {
		if val == "" {
			return
		}
		b = append(b, ' ')
		b = append(b, name...)
		b = append(b, `="`...)
		b = appendSDValue(b, val)
		b = append(b, '"')
	}
	param("seq", strconv.FormatInt(st.Seq, 10))
	for _, f := range r.fields() {
		param(f.name, f.value)
	}
	param("prev_mac", string(appendHex(nil, st.PrevMAC)))
	param("mac", string(appendHex(nil, st.MAC)))
	b = append(b, "] "...)
	line, err := AppendJSONLine(s.lineBuf[:0], st)
	if err != nil {
		return nil, err
	}
	s.lineBuf = line
	b = append(b, line[:len(line)-1]...) // without its newline
	s.buf = b
	return b, nil
}

// headerField makes a header field valid: printable US-ASCII, no spaces,
// bounded, "-" when empty.
func headerField(v string, limit int) string {
	if v == "" {
		return "-"
	}
	v = strings.Map(func(r rune) rune {
		if r < 33 || r > 126 {
			return '_'
		}
		return r
	}, v)
	if len(v) > limit {
		v = v[:limit]
	}
	return v
}

// appendSDValue escapes '"', '\' and ']' as RFC 5424 requires.
func appendSDValue(b []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '"', '\\', ']':
			b = append(b, '\\', c)
		default:
			b = append(b, c)
		}
	}
	return b
}
