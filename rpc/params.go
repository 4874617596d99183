package rpc

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

var emptyObject = []byte("{}")

// CheckParams returns a -32602 error unless raw is absent, an object or an
// array, the forms JSON-RPC 2.0 allows. It is meant for params that are
// forwarded without being decoded. DecodeParams runs the same check.
func CheckParams(raw json.RawMessage) *Error {
	switch firstByte(raw) {
	case 0, '{', '[':
		return nil
	case 'n':
		// Decode turns a null params into an absent one; accept it from
		// other callers too.
		return nil
	default:
		return InvalidParams("params must be an object or an array, not %s", jsonType(firstByte(raw)))
	}
}

// DecodeParams decodes the params of a request into v, which must be a
// non-nil pointer, as json.Unmarshal does. Absent or null params decode as
// {}. Unknown members are ignored.
//
// It returns a -32602 error naming the member at fault when raw is not an
// object or an array, or when a member has the wrong JSON type, for example
// `invalid params: "topics" must be an array of strings`. Checks of values,
// such as topic syntax, are left to the caller.
func DecodeParams(raw json.RawMessage, v any) *Error {
	if e := CheckParams(raw); e != nil {
		return e
	}
	if len(raw) == 0 || firstByte(raw) == 'n' {
		raw = emptyObject
	}

	err := json.Unmarshal(raw, v)
	if err == nil {
		return nil
	}

	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return paramsTypeError(typeErr, reflect.TypeOf(v))
	}

	var syntaxErr *json.SyntaxError
	if errors.As(err, &syntaxErr) {
		return InvalidParams("not valid JSON at byte %d", syntaxErr.Offset)
	}
	return InvalidParams("%s", strings.TrimPrefix(err.Error(), "json: "))
}

// paramsTypeError describes a type mismatch by the declared type of the
// member at fault. encoding/json reports the element type for a bad array
// element, but `"topics" must be an array of strings` is more useful than
// `"topics" must be a string`.
func paramsTypeError(typeErr *json.UnmarshalTypeError, target reflect.Type) *Error {
	// A number beyond the range of a float, such as 1e400, arrives with
	// the float type, so the JSON type is right and only the range is wrong.
	if isFloat(typeErr.Type) && strings.HasPrefix(typeErr.Value, "number") {
		limit := floatMax(typeErr.Type)
		if typeErr.Field == "" {
			return InvalidParams("a number is out of range: numbers must be from -%s to %s", limit, limit)
		}
		return InvalidParams("%q must be a number from -%s to %s", typeErr.Field, limit, limit)
	}

	if typeErr.Field == "" {
		return InvalidParams("params must be %s, not %s", describeType(typeErr.Type), describeValue(typeErr.Value))
	}

	want := typeErr.Type
	if declared := fieldType(target, typeErr.Field); declared != nil {
		want = declared
	}

	// A number that is out of range or fractional arrives with Value
	// "number 1e30", so name the range the field accepts.
	if isInteger(want) && strings.HasPrefix(typeErr.Value, "number") && isInteger(typeErr.Type) {
		lo, hi := integerRange(typeErr.Type)
		return InvalidParams("%q must be an integer from %s to %s", typeErr.Field, lo, hi)
	}
	return InvalidParams("%q must be %s", typeErr.Field, describeType(want))
}

// fieldType returns the declared type of the member at a dotted path, as
// encoding/json reports it in UnmarshalTypeError.Field, or nil when the path
// cannot be followed.
func fieldType(t reflect.Type, path string) reflect.Type {
	for name := range strings.SplitSeq(path, ".") {
		t = deref(t)
		switch t.Kind() {
		case reflect.Struct:
			f, ok := jsonField(t, name)
			if !ok {
				return nil
			}
			t = f.Type
		case reflect.Map:
			t = t.Elem()
		default:
			return nil
		}
	}
	return t
}

// jsonField finds the struct field that encoding/json fills from the member
// name: an exact tag or field name first, then a case-insensitive match.
// Fields of embedded structs are not searched.
func jsonField(t reflect.Type, name string) (reflect.StructField, bool) {
	var folded reflect.StructField
	found := false
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}

		key := f.Name
		if tag, _, _ := strings.Cut(f.Tag.Get("json"), ","); tag != "" && tag != "-" {
			key = tag
		}
		if key == name {
			return f, true
		}
		if !found && strings.EqualFold(key, name) {
			folded, found = f, true
		}
	}
	return folded, found
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// describeType names the JSON form of a Go type with an article, such as
// "a string" or "an array of strings".
func describeType(t reflect.Type) string {
	t = deref(t)
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string" // encoding/json's form of []byte
		}
		_, plural := typeNouns(t.Elem())
		return "an array of " + plural
	}

	singular, _ := typeNouns(t)
	return singular
}

// typeNouns names the JSON form of a Go type, with an article and in the
// plural.
func typeNouns(t reflect.Type) (singular, plural string) {
	t = deref(t)
	switch {
	case t.Kind() == reflect.String:
		return "a string", "strings"
	case t.Kind() == reflect.Bool:
		return "a boolean", "booleans"
	case isInteger(t):
		return "an integer", "integers"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number", "numbers"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		return "an object", "objects"
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		return "an array", "arrays"
	default:
		return "any JSON value", "JSON values"
	}
}

// describeValue adds an article to UnmarshalTypeError.Value, such as
// "array" or "number 1.5".
func describeValue(value string) string {
	switch {
	case value == "array" || value == "object":
		return "an " + value
	case value == "bool":
		return "a boolean"
	case strings.HasPrefix(value, "number"):
		return "a number"
	default:
		return "a " + value
	}
}

func isInteger(t reflect.Type) bool {
	switch deref(t).Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return true
	}
	return false
}

func isFloat(t reflect.Type) bool {
	k := deref(t).Kind()
	return k == reflect.Float32 || k == reflect.Float64
}

// floatMax formats the largest finite value of a float type.
func floatMax(t reflect.Type) string {
	if deref(t).Kind() == reflect.Float32 {
		return strconv.FormatFloat(math.MaxFloat32, 'g', -1, 32)
	}
	return strconv.FormatFloat(math.MaxFloat64, 'g', -1, 64)
}

// integerRange returns the smallest and largest value of an integer type.
func integerRange(t reflect.Type) (lo, hi string) {
	t = deref(t)
	bits := t.Bits()
	switch t.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "0", fmt.Sprint(uint64(math.MaxUint64) >> (64 - bits))
	default:
		return fmt.Sprint(int64(-1) << (bits - 1)), fmt.Sprint(int64(math.MaxInt64) >> (64 - bits))
	}
}
