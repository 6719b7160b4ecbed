package audittest

import (
	"bytes"
	_ "embed"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// fhirR4JSON is HL7's FHIR R4 JSON schema (fhir-r4/SOURCE.md says where from).
//
//go:embed fhir-r4/fhir.schema.json
var fhirR4JSON []byte

var (
	fhirOnce   sync.Once
	fhirSchema *jsonschema.Schema
	fhirErr    error
)

// ValidateFHIR checks one JSON resource against the FHIR R4 schema.
func ValidateFHIR(t testing.TB, resource []byte) error {
	t.Helper()
	fhirOnce.Do(func() {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(fhirR4JSON))
		if err != nil {
			fhirErr = err
			return
		}
		c := jsonschema.NewCompiler()
		if fhirErr = c.AddResource("fhir.schema.json", doc); fhirErr == nil {
			fhirSchema, fhirErr = c.Compile("fhir.schema.json")
		}
	})
	if fhirErr != nil {
		t.Fatalf("FHIR R4 schema: %v", fhirErr)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(resource))
	if err != nil {
		return err
	}
	return fhirSchema.Validate(inst)
}
