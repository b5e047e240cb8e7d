package changelog

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
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

// FuzzFastCodecAgreesWithEncodingJSON checks that the fast encoder writes
// what encoding/json reads back identically, and that the fast decoder
// agrees with the slow one on every line either accepts.
func FuzzFastCodecAgreesWithEncodingJSON(f *testing.F) {
	f.Add(int64(42), "17", `"{5944},8"`, `{"Title":"PO-1001","Amount":1234.5}`, true)
	f.Add(int64(1), "a\"b\\c\n\u2028", "é", `{}`, false)
	f.Add(int64(7), "\x00\x1f", "", `{"A":"<&>"}`, true)
	f.Fuzz(func(t *testing.T, seq int64, key, etag, fields string, upsert bool) {
		if seq < 1 {
			seq = 1
		}
		r := Record{Seq: seq, TS: time.Date(2026, 11, 25, 8, 0, 1, 123e6, time.UTC), Op: OpDelete, Key: key, Source: Source{ETag: etag, Site: "s"}}
		if upsert {
			if !json.Valid([]byte(fields)) || !strings.HasPrefix(strings.TrimSpace(fields), "{") {
				return
			}
			r.Op, r.Fields = OpUpsert, json.RawMessage(fields)
		}
		line, err := AppendLine(nil, &r)
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(line[:len(line)-1]) {
			t.Fatalf("invalid JSON: %s", line)
		}
		var fast, slow Record
		errFast := decodeFast(line, &fast)
		if err := slow.decodeSlow(line[:len(line)-1]); err != nil {
			t.Fatalf("slow decode of %s: %v", line, err)
		}
		if errFast != nil {
			if utf8.ValidString(key) && utf8.ValidString(etag) {
				t.Fatalf("fast decoder refused its own line %s: %v", line, errFast)
			}
			return
		}
		if fast.Seq != slow.Seq || !fast.TS.Equal(slow.TS) || fast.Op != slow.Op || fast.Key != slow.Key || fast.Source != slow.Source {
			t.Fatalf("fast %+v != slow %+v for %s", fast, slow, line)
		}
		var a, b any
		if len(fast.Fields)+len(slow.Fields) > 0 {
			if json.Unmarshal(fast.Fields, &a) != nil || json.Unmarshal(slow.Fields, &b) != nil || !reflect.DeepEqual(a, b) {
				t.Fatalf("fields differ: %s vs %s", fast.Fields, slow.Fields)
			}
		}
	})
}
