package fastapiws

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestDecodeRequestAndResponse(t *testing.T) {
	m, err := Decode([]byte(`{"request": {"method": "publish", "arguments": {"topics": ["a"]}, "call_id": "u1"}, "response": null}`))
	if err != nil || m.Request == nil || m.Response != nil {
		t.Fatalf("Decode(request) = %+v, %v", m, err)
	}
	if r := m.Request; r.Method != "publish" || string(r.Arguments) != `{"topics": ["a"]}` || r.CallID != "u1" || !r.HasCallID {
		t.Errorf("request = %+v", r)
	}

	m, err = Decode([]byte(`{"request": null, "response": {"result": "None", "result_type": "str", "call_id": 7}}`))
	if err != nil || m.Response == nil {
		t.Fatalf("Decode(response) = %+v, %v", m, err)
	}
	if r := m.Response; string(r.Result) != `"None"` || r.ResultType != "str" || r.CallID != "7" {
		t.Errorf("response = %+v, want a numeric call_id kept as its text", r)
	}

	m, err = Decode([]byte(`{"request": {"method": "_ping_"}}`))
	if err != nil || m.Request.HasCallID || m.Request.Arguments != nil {
		t.Errorf("Decode(request without arguments and call_id) = %+v, %v", m.Request, err)
	}
}

func TestDecodeRejectsOtherShapes(t *testing.T) {
	for _, in := range []string{
		`{}`, `[]`, `null`, `{"request": {"arguments": {}}}`, `{"request": {"method": 5}}`,
		`{"request": {"method": "m", "arguments": [1]}}`, `{"request": {"method": "m", "call_id": {}}}`,
	} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%s) = %v, want ErrInvalid", in, err)
		}
	}
	if _, err := Decode([]byte(`not json`)); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("Decode(not json) = %v, want a JSON syntax error", err)
	}
}

func TestEncodeResponseHasEveryMember(t *testing.T) {
	b := EncodeResponse("c1", json.RawMessage(`true`), "", &Error{Code: -32602, Message: "bad"})
	var got struct {
		Request  *struct{} `json:"request"`
		Response map[string]json.RawMessage
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("EncodeResponse = %s: %v", b, err)
	}
	for _, k := range []string{"result", "result_type", "call_id", "error"} {
		if _, ok := got.Response[k]; !ok {
			t.Errorf("EncodeResponse = %s, want a %q member", b, k)
		}
	}
	if string(got.Response["result_type"]) != `"bool"` {
		t.Errorf("result_type = %s, want \"bool\"", got.Response["result_type"])
	}
}

func TestEncodeRequestDefaultsArguments(t *testing.T) {
	b := EncodeRequest("notify", nil, "n1")
	m, err := Decode(b)
	if err != nil || m.Request.Method != "notify" || string(m.Request.Arguments) != "{}" || m.Request.CallID != "n1" {
		t.Errorf("EncodeRequest = %s, decoded %+v, %v", b, m.Request, err)
	}
}

func TestResultType(t *testing.T) {
	tests := map[string]string{`"x"`: "str", `true`: "bool", `null`: "None", `{}`: "dict", `[1]`: "list", `1.5`: "float", `2e3`: "float", `-3`: "int"}
	for in, want := range tests {
		if got := ResultType(json.RawMessage(in)); got != want {
			t.Errorf("ResultType(%s) = %q, want %q", in, got, want)
		}
	}
}
