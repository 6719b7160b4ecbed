package appservice

import (
	"crypto/tls"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// certFiles serves the certificate in a PEM pair of files and loads them
// again when either changes on disk, so a renewed certificate needs no
// restart. A pair that fails to load is logged and the last good one kept.
type certFiles struct {
	cert, key string
	log       zerolog.Logger

	mu      sync.Mutex
	current *tls.Certificate
	stamp   time.Time // newest modification time of the pair when loaded
}

func newCertFiles(cert, key string, log zerolog.Logger) (*certFiles, error) {
	c := &certFiles{cert: cert, key: key, log: log}
	if _, err := c.get(nil); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	stamp, err := newest(c.cert, c.key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && c.current != nil && !stamp.After(c.stamp) {
		return c.current, nil
	}
	pair, lerr := tls.LoadX509KeyPair(c.cert, c.key)
	if err = errors.Join(err, lerr); err != nil {
		if c.current == nil {
			return nil, err
		}
		c.log.Error().Err(err).Msg("could not load the renewed TLS certificate; still serving the previous one")
		c.stamp = stamp // do not retry on every handshake until the files change again
		return c.current, nil
	}
	if c.current != nil {
		c.log.Info().Msg("loaded the renewed TLS certificate")
	}
	c.current, c.stamp = &pair, stamp
	return c.current, nil
}

func newest(paths ...string) (time.Time, error) {
	var t time.Time
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return t, err
		}
		if st.ModTime().After(t) {
			t = st.ModTime()
		}
	}
	return t, nil
}
