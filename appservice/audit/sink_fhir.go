package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// FHIRServer is an exporter sink that stores each record as an AuditEvent
// on a FHIR R4 server: one batch Bundle per delivery, each entry a PUT of
// AuditEvent/matrix-hipaa-<seq>, so a batch sent again after an outage
// updates the same resources instead of adding copies.
type FHIRServer struct {
	BaseURL string // e.g. https://fhir.hospital.example/fhir
	Token   string // bearer token, if the server wants one
	Client  *http.Client
	Source  FHIRSource
}

type bundleEntry struct {
	Resource *AuditEventResource `json:"resource"`
	Request  struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"request"`
}

type bundle struct {
	ResourceType string        `json:"resourceType"`
	Type         string        `json:"type"`
	Entry        []bundleEntry `json:"entry"`
}

func (f *FHIRServer) Deliver(ctx context.Context, recs []Stored) error {
	b := bundle{ResourceType: "Bundle", Type: "batch"}
	for i := range recs {
		ev, err := AuditEvent(&recs[i], f.Source)
		if err != nil {
			return err
		}
		var e bundleEntry
		e.Resource = ev
		e.Request.Method, e.Request.URL = http.MethodPut, "AuditEvent/"+ev.ID
		b.Entry = append(b.Entry, e)
	}
	body, err := json.Marshal(b)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(f.BaseURL, "/"), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Accept", "application/fhir+json")
	if f.Token != "" {
		req.Header.Set("Authorization", "Bearer "+f.Token)
	}
	cli := f.Client
	if cli == nil {
		cli = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := cli.Do(req)
	if err != nil {
		return fmt.Errorf("fhir server: %w", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fhir server answered HTTP %d to the batch", resp.StatusCode)
	}
	// A batch succeeds or fails entry by entry.
	var reply struct {
		Entry []struct {
			Response struct {
				Status string `json:"status"`
			} `json:"response"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(data, &reply); err != nil {
		return fmt.Errorf("fhir server: batch response is not a Bundle: %w", err)
	}
	if len(reply.Entry) != len(b.Entry) {
		return fmt.Errorf("fhir server: %d entries answered for %d sent", len(reply.Entry), len(b.Entry))
	}
	for i, e := range reply.Entry {
		if !strings.HasPrefix(e.Response.Status, "200") && !strings.HasPrefix(e.Response.Status, "201") {
			return fmt.Errorf("fhir server refused AuditEvent for record %d: %s", recs[i].Seq, e.Response.Status)
		}
	}
	return nil
}

func (f *FHIRServer) Close() error { return nil }
