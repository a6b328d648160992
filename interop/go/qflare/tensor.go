package qflare

import (
	"encoding/binary"
	"math"
	"unicode/utf8"
)

// ---------------------------------------------------------------- tensors (§8)

// DTypeSize maps the dtype strings of §8 to element sizes.
var DTypeSize = map[string]int{"<f4": 4, "<f2": 2, "bf16": 2, "|i1": 1, "|u1": 1}

// Tensor is a checked tensor; Data aliases the record.
type Tensor struct {
	Name  string
	DType string
	Shape []uint64
	Data  []byte
}

// CheckTensor validates one tensor map at path (§8), finiteness aside:
// wrong msgpack types are schema, a dtype, shape or length that breaks §8 is tensor.
func CheckTensor(x Value, path string) (*Tensor, error) {
	if x.Kind != KMap {
		return nil, errf("schema", path, "tensor is %s, not map", x.Kind)
	}
	if err := checkKeys(x, []string{"name", "dtype", "shape", "data"}, path); err != nil {
		return nil, err
	}
	name, _ := x.Get("name")
	dtype, _ := x.Get("dtype")
	shape, _ := x.Get("shape")
	data, _ := x.Get("data")
	if name.Kind != KStr {
		return nil, errf("schema", path+".name", "not a str")
	}
	if n := utf8.RuneCountInString(name.S); n < 1 || n > 256 {
		return nil, errf("schema", path+".name", "%d characters, not 1..256", n)
	}
	if dtype.Kind != KStr {
		return nil, errf("schema", path+".dtype", "not a str")
	}
	size, ok := DTypeSize[dtype.S]
	if !ok {
		return nil, errf("tensor", path+".dtype", "unsupported dtype %q", dtype.S)
	}
	if shape.Kind != KArray {
		return nil, errf("schema", path+".shape", "not an array")
	}
	if len(shape.Arr) > 8 {
		return nil, errf("tensor", path+".shape", "%d dimensions exceed 8", len(shape.Arr))
	}
	t := &Tensor{Name: name.S, DType: dtype.S}
	want := uint64(size)
	overflow := false
	// The extent counts a zero dimension as 1: a shape whose other dimensions overflow is
	// refused even when the tensor holds no bytes.
	extent := uint64(size)
	for i, d := range shape.Arr {
		if d.Kind != KInt {
			return nil, errf("schema", joinIndex(path+".shape", i), "not an int")
		}
		if d.Neg || d.U > math.MaxInt32 {
			return nil, errf("tensor", joinIndex(path+".shape", i), "dimension not in 0..2^31-1")
		}
		t.Shape = append(t.Shape, d.U)
		if d.U != 0 && want > math.MaxUint64/d.U {
			overflow = true
		}
		want *= d.U
		if d.U > 1 {
			if extent > MaxMessage {
				extent = MaxMessage + 1
			} else {
				extent *= d.U
			}
		}
	}
	if extent > MaxMessage {
		return nil, errf("limit", path+".shape", "shape spans more than %d bytes", MaxMessage)
	}
	if data.Kind != KBin {
		return nil, errf("schema", path+".data", "not bin")
	}
	t.Data = data.Raw
	if overflow && want != 0 || want != uint64(len(data.Raw)) {
		return nil, errf("tensor", path+".data", "data is %d bytes, shape needs %d", len(data.Raw), want)
	}
	return t, nil
}

// Finite reports whether a float tensor is free of NaN and infinities (§8).
func (t *Tensor) Finite() bool { return tensorFinite(t.DType, t.Data) }

func tensorFinite(dtype string, data []byte) bool {
	switch dtype {
	case "<f4":
		for i := 0; i+4 <= len(data); i += 4 {
			if binary.LittleEndian.Uint32(data[i:])&0x7f800000 == 0x7f800000 {
				return false
			}
		}
	case "<f2":
		for i := 0; i+2 <= len(data); i += 2 {
			if binary.LittleEndian.Uint16(data[i:])&0x7c00 == 0x7c00 {
				return false
			}
		}
	case "bf16":
		for i := 0; i+2 <= len(data); i += 2 {
			if binary.LittleEndian.Uint16(data[i:])&0x7f80 == 0x7f80 {
				return false
			}
		}
	}
	return true
}

// Float64s decodes the tensor elements as float64 values.
func (t *Tensor) Float64s() []float64 {
	size := DTypeSize[t.DType]
	out := make([]float64, 0, len(t.Data)/size)
	for i := 0; i+size <= len(t.Data); i += size {
		var x float64
		switch t.DType {
		case "<f4":
			x = float64(math.Float32frombits(binary.LittleEndian.Uint32(t.Data[i:])))
		case "<f2":
			x = float16(binary.LittleEndian.Uint16(t.Data[i:]))
		case "bf16":
			x = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(t.Data[i:])) << 16))
		case "|i1":
			x = float64(int8(t.Data[i]))
		case "|u1":
			x = float64(t.Data[i])
		}
		out = append(out, x)
	}
	return out
}

func float16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(frac, -24)
	case 0x1f:
		if frac != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * math.Ldexp(1+frac/1024, exp-15)
}
