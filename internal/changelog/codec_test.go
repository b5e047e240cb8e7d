package changelog

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRecordJSONMatchesContract(t *testing.T) {
	t.Parallel()
	r := Record{Seq: 42, TS: time.Date(2026, 11, 25, 8, 0, 1, 123456789, time.UTC), Op: OpUpsert, Key: "17",
		Source: Source{Site: "s", List: "l", ETag: `"{5944},8"`, Modified: "2026-11-25T07:59:58Z"},
		Fields: json.RawMessage(`{"Title":"PO-1001","Amount":1234.5}`)}
	got, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"seq":42,"ts":"2026-11-25T08:00:01.123Z","op":"upsert","key":"17","source":{"site":"s","list":"l","etag":"\"{5944},8\"","modified":"2026-11-25T07:59:58Z"},"fields":{"Title":"PO-1001","Amount":1234.5}}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	var back Record
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	if back.Seq != 42 || back.Key != "17" || !back.TS.Equal(r.TS.Truncate(time.Millisecond)) || string(back.Fields) != string(r.Fields) {
		t.Fatalf("round trip = %+v", back)
	}
	del, _ := json.Marshal(Record{Seq: 43, TS: r.TS, Op: OpDelete, Key: "3"})
	if strings.Contains(string(del), "fields") {
		t.Fatalf("delete carries fields: %s", del)
	}
}

func TestRecordDecodeRejectsBadEnvelopes(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		`{"seq":1,"ts":"nope","op":"upsert","key":"1"}`,
		`{"seq":1,"ts":"2026-11-25T08:00:01.123Z","op":"merge","key":"1"}`,
		`{"seq":0,"ts":"2026-11-25T08:00:01.123Z","op":"upsert","key":"1"}`,
		`{"seq":"1"}`,
		`not json`,
	} {
		var r Record
		if err := json.Unmarshal([]byte(in), &r); err == nil {
			t.Errorf("accepted %s", in)
		}
	}
}

func FuzzRecordDecode(f *testing.F) {
	f.Add([]byte(`{"seq":42,"ts":"2026-11-25T08:00:01.123Z","op":"upsert","key":"17","source":{},"fields":{"A":1}}`))
	f.Add([]byte(`{"seq":43,"ts":"2026-11-25T08:00:01.123Z","op":"delete","key":"3","source":{}}`))
	f.Add([]byte(`{"seq":1,"ts":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Record
		if err := json.Unmarshal(data, &r); err != nil {
			return
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var r2 Record
		if err := json.Unmarshal(again, &r2); err != nil {
			t.Fatalf("decode of re-encoded %s: %v", again, err)
		}
	})
}
