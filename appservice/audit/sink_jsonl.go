package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// JSONLFile is an exporter sink writing one line per record to a file,
// fsynced per batch, rotated by size and age. A rotated file is renamed to
// <name>-<first time>-<first seq>.<ext> beside it and never touched again.
type JSONLFile struct {
	Path    string
	MaxSize int64         // bytes; 0 for no limit
	MaxAge  time.Duration // 0 for no limit
	Now     func() time.Time
	// Render appends one record's line; AppendJSONLine if nil (the fhir
	// exporter writes AuditEvent resources as NDJSON instead).
	Render func([]byte, *Stored) ([]byte, error)

	f        *os.File
	size     int64
	opened   time.Time
	firstSeq int64
	firstTS  time.Time
	buf      []byte
}

func (j *JSONLFile) now() time.Time {
	if j.Now != nil {
		return j.Now()
	}
	return time.Now()
}

func (j *JSONLFile) open() error {
	if err := os.MkdirAll(filepath.Dir(j.Path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(j.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	j.f, j.size, j.opened, j.firstSeq = f, st.Size(), j.now(), 0
	if st.Size() > 0 {
		j.opened = st.ModTime() // an existing file's age counts from when it was last written
	}
	return nil
}

// rotate closes the current file and moves it aside.
func (j *JSONLFile) rotate() error {
	if err := j.f.Close(); err != nil {
		return err
	}
	j.f = nil
	ext := filepath.Ext(j.Path)
	base := strings.TrimSuffix(j.Path, ext)
	stamp := j.firstTS.UTC().Format("20060102T150405Z")
	if j.firstSeq == 0 {
		stamp = j.opened.UTC().Format("20060102T150405Z")
	}
	target := fmt.Sprintf("%s-%s-%d%s", base, stamp, j.firstSeq, ext)
	if err := os.Rename(j.Path, target); err != nil {
		return err
	}
	return syncDir(filepath.Dir(j.Path))
}

func (j *JSONLFile) Deliver(ctx context.Context, recs []Stored) error {
	if j.f == nil {
		if err := j.open(); err != nil {
			return err
		}
	}
	if j.size > 0 && ((j.MaxSize > 0 && j.size >= j.MaxSize) || (j.MaxAge > 0 && j.now().Sub(j.opened) >= j.MaxAge)) {
		if err := j.rotate(); err != nil {
			return err
		}
		if err := j.open(); err != nil {
			return err
		}
	}
	j.buf = j.buf[:0]
	var err error
	render := j.Render
	if render == nil {
		render = AppendJSONLine
	}
	for i := range recs {
		if j.buf, err = render(j.buf, &recs[i]); err != nil {
			return err
		}
	}
	if j.firstSeq == 0 && len(recs) > 0 {
		j.firstSeq, j.firstTS = recs[0].Seq, recs[0].Time()
	}
	if _, err := j.f.Write(j.buf); err != nil {
		j.f.Close()
		j.f = nil
		return err
	}
	j.size += int64(len(j.buf))
	return j.f.Sync()
}

func (j *JSONLFile) Close() error {
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
