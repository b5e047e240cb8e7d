package sharepoint

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzCleanFields checks the one-pass cleaner against encoding/json: the
// result is valid JSON, holds exactly the non-annotation members with their
// values unchanged, and Modified is found.
func FuzzCleanFields(f *testing.F) {
	f.Add(`{"@odata.etag":"\"a,1\"","Title":"PO-1","Amount":12.5,"Tags@odata.type":"#Collection(Edm.String)","Tags":["a","b"]}`)
	f.Add(`{ "Title" : "x y" , "Nested": {"a": [1, 2, {"b":"}"}]}, "Modified":"2026-11-25T08:00:00Z"}`)
	f.Add(`{"k\u0040odata":"annotation by escape","Quote\"Key":"v\\\"","Empty":{},"E2":[],"N":null,"B":true}`)
	f.Add(`{}`)
	f.Fuzz(func(t *testing.T, in string) {
		var want map[string]any
		if json.Unmarshal([]byte(in), &want) != nil || want == nil {
			return
		}
		got, modified, err := cleanFields(json.RawMessage(in), true)
		if err != nil {
			t.Fatalf("cleanFields(%s): %v", in, err)
		}
		var m map[string]any
		if err := json.Unmarshal(got, &m); err != nil {
			t.Fatalf("cleanFields(%s) = %s: not JSON: %v", in, got, err)
		}
		for k := range want {
			if containsAt(k) {
				delete(want, k)
			}
		}
		if !reflect.DeepEqual(m, want) {
			t.Fatalf("cleanFields(%s) = %s, want the members %v", in, got, want)
		}
		if s, ok := want["Modified"].(string); ok && s != modified {
			t.Fatalf("modified = %q, want %q", modified, s)
		}
	})
}

func containsAt(s string) bool {
	for _, r := range s {
		if r == '@' {
			return true
		}
	}
	return false
}
