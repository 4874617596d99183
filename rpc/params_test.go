package rpc

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type subscribeParams struct {
	Topics []string `json:"topics"`
	Since  *int64   `json:"since"`
	Epoch  string   `json:"epoch"`
	Limit  uint16   `json:"limit"`
	Filter struct {
		Level int `json:"level"`
	} `json:"filter"`
	Labels  map[string]string `json:"labels"`
	Ratio   float64           `json:"ratio"`
	Durable bool              `json:"durable"`
	Data    json.RawMessage   `json:"data"`
}

func TestDecodeParamsValid(t *testing.T) {
	since := int64(42)
	tests := []struct {
		name string
		raw  json.RawMessage
		want subscribeParams
	}{
		{"absent", nil, subscribeParams{}},
		{"null", raw(`null`), subscribeParams{}},
		{"empty object", raw(`{}`), subscribeParams{}},
		{"fields", raw(`{"topics":["a","b.*"],"since":42,"epoch":"e1"}`), subscribeParams{Topics: []string{"a", "b.*"}, Since: &since, Epoch: "e1"}},
		{"unknown member ignored", raw(`{"topics":[],"whatever":[1,2]}`), subscribeParams{Topics: []string{}}},
		{"raw data kept", raw(`{"data":{"x":[1, 2]}}`), subscribeParams{Data: raw(`{"x":[1, 2]}`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got subscribeParams
			if err := DecodeParams(tt.raw, &got); err != nil {
				t.Fatalf("DecodeParams(%s) = %v, want nil", tt.raw, err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("DecodeParams(%s) mismatch (-got +want):\n%s", tt.raw, diff)
			}
		})
	}
}

func TestDecodeParamsAbsentIntoMap(t *testing.T) {
	var got map[string]any
	if err := DecodeParams(nil, &got); err != nil {
		t.Fatalf("DecodeParams(nil) = %v, want nil", err)
	}
	if got == nil || len(got) != 0 {
		t.Errorf("DecodeParams(nil) into a map = %#v, want an empty map", got)
	}
}

func TestDecodeParamsInvalid(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want string
	}{
		{"number params", `5`, `invalid params: params must be an object or an array, not a number`},
		{"string params", `"a"`, `invalid params: params must be an object or an array, not a string`},
		{"boolean params", `false`, `invalid params: params must be an object or an array, not a boolean`},
		{"array for struct", `["a"]`, `invalid params: params must be an object, not an array`},
		{"topics string", `{"topics":"a"}`, `invalid params: "topics" must be an array of strings`},
		{"topics element number", `{"topics":["a",1]}`, `invalid params: "topics" must be an array of strings`},
		{"topics element array", `{"topics":[["a"]]}`, `invalid params: "topics" must be an array of strings`},
		{"since string", `{"since":"10"}`, `invalid params: "since" must be an integer`},
		{"since fractional", `{"since":1.5}`, `invalid params: "since" must be an integer from -9223372036854775808 to 9223372036854775807`},
		{"since too large", `{"since":1e30}`, `invalid params: "since" must be an integer from -9223372036854775808 to 9223372036854775807`},
		{"limit negative", `{"limit":-1}`, `invalid params: "limit" must be an integer from 0 to 65535`},
		{"epoch number", `{"epoch":7}`, `invalid params: "epoch" must be a string`},
		{"nested field", `{"filter":{"level":"high"}}`, `invalid params: "filter.level" must be an integer`},
		{"object field", `{"filter":[]}`, `invalid params: "filter" must be an object`},
		{"map value", `{"labels":{"a":1}}`, `invalid params: "labels" must be an object`},
		{"float", `{"ratio":"x"}`, `invalid params: "ratio" must be a number`},
		{"float out of range", `{"ratio":-1e400}`, `invalid params: "ratio" must be a number from -1.7976931348623157e+308 to 1.7976931348623157e+308`},
		{"boolean", `{"durable":"yes"}`, `invalid params: "durable" must be a boolean`},
		{"member named by its declared name", `{"Topics":"a"}`, `invalid params: "topics" must be an array of strings`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v subscribeParams
			err := DecodeParams(raw(tt.raw), &v)
			if err == nil {
				t.Fatalf("DecodeParams(%s) = nil, want %q", tt.raw, tt.want)
			}
			if err.Code != CodeInvalidParams {
				t.Errorf("DecodeParams(%s) code = %d, want %d", tt.raw, err.Code, CodeInvalidParams)
			}
			if err.Message != tt.want {
				t.Errorf("DecodeParams(%s) message = %q, want %q", tt.raw, err.Message, tt.want)
			}
		})
	}
}

func TestDecodeParamsNumberOutOfRangeIntoAny(t *testing.T) {
	var got any
	err := DecodeParams(raw(`{"a":[1e400]}`), &got)
	want := "invalid params: a number is out of range: numbers must be from -1.7976931348623157e+308 to 1.7976931348623157e+308"
	if err == nil || err.Message != want {
		t.Errorf(`DecodeParams({"a":[1e400]}) into any = %v, want %q`, err, want)
	}
}

func TestDecodeParamsArrayTarget(t *testing.T) {
	var got []int
	if err := DecodeParams(raw(`[1,2]`), &got); err != nil {
		t.Fatalf("DecodeParams([1,2]) = %v, want nil", err)
	}
	if diff := cmp.Diff(got, []int{1, 2}); diff != "" {
		t.Errorf("DecodeParams([1,2]) mismatch (-got +want):\n%s", diff)
	}

	err := DecodeParams(raw(`{"a":1}`), &got)
	if err == nil || err.Message != "invalid params: params must be an array of integers, not an object" {
		t.Errorf(`DecodeParams({"a":1}) into []int = %v, want "params must be an array of integers"`, err)
	}
}

func TestCheckParams(t *testing.T) {
	tests := []struct {
		raw    string
		wantOK bool
	}{
		{``, true},
		{`null`, true},
		{`{}`, true},
		{`[]`, true},
		{` {"a":1}`, true},
		{`1`, false},
		{`"s"`, false},
		{`true`, false},
	}
	for _, tt := range tests {
		err := CheckParams(raw(tt.raw))
		if got := err == nil; got != tt.wantOK {
			t.Errorf("CheckParams(%q) = %v, want ok %v", tt.raw, err, tt.wantOK)
		}
		if err != nil && err.Code != CodeInvalidParams {
			t.Errorf("CheckParams(%q) code = %d, want %d", tt.raw, err.Code, CodeInvalidParams)
		}
	}
}

func TestErrorConstructors(t *testing.T) {
	tests := []struct {
		name     string
		got      *Error
		wantCode int
		wantMsg  string
	}{
		{"Errorf", Errorf(CodeForbidden, "topic %q is not allowed", "db.x"), CodeForbidden, `topic "db.x" is not allowed`},
		{"InvalidParams", InvalidParams("%q must not be empty", "topics"), CodeInvalidParams, `invalid params: "topics" must not be empty`},
		{"MethodNotFound", MethodNotFound("app.x"), CodeMethodNotFound, `method "app.x" not found`},
	}
	for _, tt := range tests {
		if tt.got.Code != tt.wantCode {
			t.Errorf("%s code = %d, want %d", tt.name, tt.got.Code, tt.wantCode)
		}
		if tt.got.Message != tt.wantMsg {
			t.Errorf("%s message = %q, want %q", tt.name, tt.got.Message, tt.wantMsg)
		}
	}

	var err error = Errorf(CodeRateLimited, "too many requests in flight")
	if got, want := err.Error(), "json-rpc error -32004: too many requests in flight"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
