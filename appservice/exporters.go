package appservice

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// Exporters builds the configured audit exporters.
func (s *Service) Exporters() ([]*audit.Exporter, error) {
	var out []*audit.Exporter
	for _, e := range s.Config.Audit.Exporters {
		sink, err := NewSink(s.Config, e)
		if err != nil {
			return nil, fmt.Errorf("audit exporter %s: %w", e.Name, err)
		}
		name := e.Name
		out = append(out, &audit.Exporter{
			Name: name, Sink: sink, DB: s.DB, Stats: s.Metrics, Batch: 500,
			OnError: func(name string, err error) {
				s.Log.Warn().Str("exporter", name).Err(err).Msg("audit export failed; retrying, nothing is skipped")
			},
		})
	}
	return out, nil
}

// NewSink makes the sink an exporter config describes.
func NewSink(cfg *config.Config, e config.Exporter) (audit.Sink, error) {
	switch e.Type {
	case "jsonl":
		return &audit.JSONLFile{Path: e.Path, MaxSize: e.MaxSizeMB << 20, MaxAge: e.MaxAge.D()}, nil
	case "syslog":
		addr := e.Address
		if _, _, err := net.SplitHostPort(addr); err != nil {
			addr = net.JoinHostPort(addr, "6514") // RFC 5425's port
		}
		host, _, _ := net.SplitHostPort(addr)
		tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if e.ServerName != "" {
			tc.ServerName = e.ServerName
		}
		if e.CAFile != "" {
			pem, err := os.ReadFile(e.CAFile)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s holds no PEM certificate", e.CAFile)
			}
		}
		if e.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
			if err != nil {
				return nil, err
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		return &audit.Syslog{Address: addr, TLS: tc, SyslogFormat: audit.SyslogFormat{Hostname: e.Hostname, SDID: e.SDID}}, nil
	case "fhir":
		host, _ := os.Hostname()
		src := audit.FHIRSource{Observer: host, Site: e.Site}
		var sinks multiSink
		if e.Path != "" {
			sinks = append(sinks, &audit.JSONLFile{Path: e.Path, MaxSize: e.MaxSizeMB << 20, MaxAge: e.MaxAge.D(),
				Render: func(b []byte, st *audit.Stored) ([]byte, error) { return audit.AppendFHIRLine(b, st, src) }})
		}
		if e.URL != "" {
			sinks = append(sinks, &audit.FHIRServer{BaseURL: e.URL, Token: e.Token.Reveal(), Source: src})
		}
		if len(sinks) == 1 {
			return sinks[0], nil
		}
		return sinks, nil
	}
	return nil, fmt.Errorf("unknown exporter type %q", e.Type)
}

// multiSink delivers to each of its sinks in turn; a batch counts as
// delivered only when all have it (the ones that had it get it again: at
// least once).
type multiSink []audit.Sink

func (m multiSink) Deliver(ctx context.Context, recs []audit.Stored) error {
	for _, s := range m {
		if err := s.Deliver(ctx, recs); err != nil {
			return err
		}
	}
	return nil
}

func (m multiSink) Close() error {
	var first error
	for _, s := range m {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
