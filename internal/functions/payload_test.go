package functions

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func TestHostString(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{`"\"hello\""`, "hello"},                 // §4: doubly encoded
		{`"hello"`, "hello"},                     // singly encoded
		{`"\"{\\\"a\\\":1}\""`, `{"a":1}`},       // §0.5: {"a":1} as the host sends it
		{`"{\"a\":1}"`, `{"a":1}`},               // the same, single
		{`"\"\\\"x\\\"\""`, "x"},                 // three levels
		{`"\"unterminated"`, `"unterminated`},    // a lone quote stays
		{`""`, ""},                               //
		{`"\"\""`, ""},                           // an encoded empty string
		{`4`, "4"},                               // a number's text
		{`  "x"  `, "x"},                         // whitespace around
		{`"\"a\" and \"b\""`, `"a" and "b"`},     // not a JSON string inside
		{`"\"5b1c6f5e-9a4e\""`, "5b1c6f5e-9a4e"}, // §7.2 Id
	} {
		if got := hostString(json.RawMessage(tc.raw)); got != tc.want {
			t.Errorf("hostString(%s) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestDecodeQueueMetadata(t *testing.T) {
	inv, err := DecodeInvocation([]byte(`{"Data":{"msg":"\"{\\\"pipeline\\\":\\\"p\\\",\\\"destination\\\":\\\"d\\\"}\""},
	  "Metadata":{"DequeueCount":"3","Id":"\"5b1c\"","PopReceipt":"\"AgAA+1QE=\"",
	  "InsertionTime":"2025-06-01T10:00:00+00:00","ExpirationTime":"\"2025-06-08T10:00:00.1234567Z\"","NextVisibleTime":"garbage"}}`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeQueue(inv, QueueBinding)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != "5b1c" || m.PopReceipt != "AgAA+1QE=" || m.DequeueCount != 3 {
		t.Fatalf("metadata %+v", m)
	}
	if !m.InsertionTime.Equal(time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)) ||
		!m.ExpirationTime.Equal(time.Date(2025, 6, 8, 10, 0, 0, 123456700, time.UTC)) || !m.NextVisibleTime.IsZero() {
		t.Fatalf("times %+v", m)
	}
	if string(m.Text) != `{"pipeline":"p","destination":"d"}` {
		t.Fatalf("text %s", m.Text)
	}
}

func TestDequeueCountShapes(t *testing.T) {
	for raw, want := range map[string]int64{`"1"`: 1, `5`: 5, `"\"5\""`: 5, `5.0`: 5, `null`: 0, `"x"`: 0, `true`: 0, `{}`: 0} {
		inv := Invocation{Data: map[string]json.RawMessage{"msg": json.RawMessage(`"{}"`)},
			Metadata: map[string]json.RawMessage{"DequeueCount": json.RawMessage(raw)}}
		m, err := DecodeQueue(inv, QueueBinding)
		if err != nil || m.DequeueCount != want {
			t.Errorf("DequeueCount %s = %d, %v; want %d", raw, m.DequeueCount, err, want)
		}
	}
}

func TestDecodeWakeUp(t *testing.T) {
	for _, tc := range []struct {
		text string
		ok   bool
		head int64
	}{
		{`{"pipeline":"p","destination":"d","head":7}`, true, 7},
		{`{"pipeline":"p","destination":"d"}`, true, 0},
		{`{"Pipeline":"p","Destination":"d","Head":"9","x":[1]}`, true, 9},
		{`{"pipeline":"p","destination":"d","head":-1}`, false, 0},
		{`{"pipeline":"p","destination":"d","head":1.5}`, false, 0},
		{`{"pipeline":"p"}`, false, 0},
		{`{"pipeline":1,"destination":"d"}`, false, 0},
		{`[1]`, false, 0},
		{`hello`, false, 0},
		{``, false, 0},
	} {
		wu, err := DecodeWakeUp([]byte(tc.text))
		if (err == nil) != tc.ok || (tc.ok && (wu.Pipeline != "p" || wu.Destination != "d" || wu.Head != tc.head)) {
			t.Errorf("DecodeWakeUp(%s) = %+v, %v", tc.text, wu, err)
		}
	}
}

func TestDecodeTimerTimes(t *testing.T) {
	inv, _ := DecodeInvocation([]byte(`{"Data":{"Timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":{"Last":"0001-01-01T00:00:00+00:00","Next":"2025-06-01T10:00:00","LastUpdated":"2025-06-01T09:55:00.0061234+00:00"},"IsPastDue":"true"}}}`))
	ti, err := DecodeTimer(inv, TimerBinding) // the binding matches case-insensitively
	if err != nil {
		t.Fatal(err)
	}
	s := ti.ScheduleStatus
	if !ti.IsPastDue || !ti.AdjustForDST || s == nil || !s.Last.IsZero() ||
		!s.Next.Equal(time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)) ||
		!s.LastUpdated.Equal(time.Date(2025, 6, 1, 9, 55, 0, 6123400, time.UTC)) {
		t.Fatalf("timer %+v %+v", ti, s)
	}
	if _, err := DecodeTimer(Invocation{Data: map[string]json.RawMessage{"timer": json.RawMessage(`[1]`)}}, TimerBinding); err == nil {
		t.Fatal("an array timer should not decode")
	}
}

func TestDecodeHTTP(t *testing.T) {
	inv, err := DecodeInvocation([]byte(`{"Data":{"req":{
	  "Url":"https://x/api/replay/p/d?a=1&a=2","Method":"post",
	  "Query":{"a":"1,2","b":["x","y"],"n":3,"z":null},
	  "Headers":{"x-functions-key":["k"],"Accept":"text/plain","X-Many":["1","2"]},
	  "Params":{"Pipeline":"p","destination":"d"},
	  "Identities":[{"AuthenticationType":"WebJobsAuthLevel","Claims":[{"Type":"` + ClaimKeyID + `","Value":"ops"}]},
	                {"AuthenticationType":"aad","Name":"alice@contoso.com","Claims":[]}],
	  "Body":"{\"fromSeq\":1}"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := DecodeHTTP(inv, RequestBinding)
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != http.MethodPost || r.Query["a"] != "1,2" || r.Query["b"] != "x,y" || r.Query["n"] != "3" || r.Query["z"] != "" {
		t.Fatalf("method/query %q %v", r.Method, r.Query)
	}
	if r.Headers.Get("X-Functions-Key") != "k" || r.Headers.Get("accept") != "text/plain" || len(r.Headers.Values("X-Many")) != 2 {
		t.Fatalf("headers %v", r.Headers)
	}
	if r.Param("pipeline") != "p" || r.Param("destination") != "d" || r.Param("other") != "" {
		t.Fatalf("params %v", r.Params)
	}
	if string(r.Body) != `{"fromSeq":1}` {
		t.Fatalf("body %q", r.Body)
	}
	if got := r.Caller(); got != "http:alice@contoso.com" {
		t.Fatalf("caller %q", got)
	}

	// Body absent vs null vs empty string.
	for raw, wantNil := range map[string]bool{`{"Data":{"req":{}}}`: true, `{"Data":{"req":{"Body":null}}}`: true, `{"Data":{"req":{"Body":""}}}`: false} {
		inv, _ := DecodeInvocation([]byte(raw))
		r, err := DecodeHTTP(inv, RequestBinding)
		if err != nil || (r.Body == nil) != wantNil || r.Caller() != "http" {
			t.Errorf("%s: body %q, caller %q, %v", raw, r.Body, r.Caller(), err)
		}
	}
}

func TestBase64Guard(t *testing.T) {
	for s, want := range map[string]bool{
		"done": true, "abcd": true, "1234": true, "": true, "AgAA AAMA": true, // §5: all mangled by the host
		"abc": false, "hello": false, `{"a":1}`: false, "done!": false,
	} {
		if got := isBase64Text(s); got != want {
			t.Errorf("isBase64Text(%q) = %v, want %v", s, got, want)
		}
	}
	if err := checkOutputs(map[string]any{"out": "done"}); err == nil {
		t.Error(`a queue output "done" must be refused`)
	}
	if err := checkOutputs(map[string]any{"out": []string{`{"a":1}`, "abcd"}}); err == nil {
		t.Error(`a queue output "abcd" must be refused`)
	}
	if err := checkOutputs(map[string]any{"out": `{"a":1}`, "res": ErrorResponse(400, "abcd")}); err != nil {
		t.Error(err)
	}
}

func TestEncodeResponseNeverNull(t *testing.T) {
	got := string(encodeResponse(Response{}))
	if got != `{"Outputs":{},"Logs":[],"ReturnValue":null}` {
		t.Fatal(got)
	}
}
