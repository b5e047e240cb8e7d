package sharepoint

import (
	"bytes"
	"encoding/json"
	"net/url"
	"reflect"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
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

// FuzzFastPageMatchesStream: for every page both decoders accept, they
// agree item by item.
func FuzzFastPageMatchesStream(f *testing.F) {
	link := `"https://graph.microsoft.com/v1.0/sites/s/lists/l/items/delta?token=x"`
	f.Add(`{"@odata.context":"c","@odata.nextLink":` + link + `,"value":[{"id":"1","eTag":"\"e,1\"","lastModifiedDateTime":"2026-11-25T08:00:00Z","fields":{"@odata.etag":"x","Title":"a","N":1}},{"id":"2","deleted":{"state":"deleted"}}]}`)
	f.Add(`{"value":[{"@removed":{"reason":"deleted"},"id":"3"},{"id":4,"fields":{"A\u0040x":1,"B":[1, 2]}}],"@odata.deltaLink":` + link + `}`)
	f.Add(`{"value":[],"@odata.deltaLink":` + link + `}`)
	c, err := New(Options{GraphURL: "https://graph.microsoft.com/v1.0", Auth: config.Auth{Type: config.AuthBearer, Token: "t"}})
	if err != nil {
		f.Fatal(err)
	}
	u, _ := url.Parse("https://graph.microsoft.com/v1.0/sites/s/lists/l/items/delta")
	f.Fuzz(func(t *testing.T, page string) {
		data := []byte(page)
		if !json.Valid(data) {
			return
		}
		fp, ok := fastPage(data)
		if !ok {
			return
		}
		sp, err := c.decodePageStream(bytes.NewReader(data), u)
		if err != nil {
			if _, err2 := c.checkPage(fp, u, true, fp.NextLink != "", fp.DeltaLink != ""); err2 == nil {
				t.Fatalf("stream refused a page the fast path accepts: %v\n%s", err, page)
			}
			return
		}
		if !reflect.DeepEqual(fp.Items, sp.Items) || fp.NextLink != sp.NextLink || fp.DeltaLink != sp.DeltaLink {
			t.Fatalf("fast %+v\nstream %+v\npage %s", fp, sp, page)
		}
	})
}
