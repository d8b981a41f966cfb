// Command kserve_client is a Go client of tensorwire's KServe v2 / Triton gRPC protocol.
//
// It proves that stubs generated from proto/ with stock protoc-gen-go and protoc-gen-go-grpc talk to
// tensorwire unchanged: it checks ServerLive, ServerReady and ModelMetadata, runs ModelInfer on the
// add_sub model (OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32, shape [1,16]) once with
// raw_input_contents and once with typed fp32_contents, checks every number, and checks that a
// request with the wrong datatype is refused with InvalidArgument.
//
// It prints one line per check and "OK" at the end; any failure prints "FAIL ..." and exits 1.
// Built by tests/go/build.sh; run by tests/test_go_client.py.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "tensorwire/inference"
)

const n = 16 // elements per input: shape [1, 16]

var (
	addr    = flag.String("addr", "127.0.0.1:8001", "tensorwire gRPC address host:port")
	model   = flag.String("model", "add_sub", "model to query (must be an add/sub model with INPUT0, INPUT1 FP32 [16])")
	timeout = flag.Duration("timeout", 10*time.Second, "deadline for connecting and for each RPC")
)

func fail(format string, args ...interface{}) {
	fmt.Printf("FAIL "+format+"\n", args...)
	os.Exit(1)
}

func pass(format string, args ...interface{}) {
	fmt.Printf("PASS "+format+"\n", args...)
}

func call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), *timeout)
}

// encodeFP32 flattens values as little-endian float32, the layout of raw_input_contents.
func encodeFP32(values []float32) []byte {
	buf := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	return buf
}

func decodeFP32(raw []byte) ([]float32, error) {
	if len(raw)%4 != 0 {
		return nil, fmt.Errorf("%d bytes is not a whole number of float32", len(raw))
	}
	out := make([]float32, len(raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out, nil
}

func sameShape(got []int64, want []int64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// outputValues returns the named output's values, from raw_output_contents when the server sent
// raw bytes (Triton's and tensorwire's default) or from the typed contents otherwise.
func outputValues(resp *pb.ModelInferResponse, name string) ([]float32, error) {
	for i, out := range resp.GetOutputs() {
		if out.GetName() != name {
			continue
		}
		if out.GetDatatype() != "FP32" {
			return nil, fmt.Errorf("%s datatype %q, want FP32", name, out.GetDatatype())
		}
		if !sameShape(out.GetShape(), []int64{1, n}) {
			return nil, fmt.Errorf("%s shape %v, want [1 %d]", name, out.GetShape(), n)
		}
		if raw := resp.GetRawOutputContents(); len(raw) > 0 {
			if i >= len(raw) {
				return nil, fmt.Errorf("%d raw_output_contents for %d outputs", len(raw), len(resp.GetOutputs()))
			}
			return decodeFP32(raw[i])
		}
		return out.GetContents().GetFp32Contents(), nil
	}
	return nil, fmt.Errorf("no output %s in response (outputs: %v)", name, outputNames(resp))
}

func outputNames(resp *pb.ModelInferResponse) []string {
	names := []string{}
	for _, out := range resp.GetOutputs() {
		names = append(names, out.GetName())
	}
	return names
}

// checkAddSub checks every element of OUTPUT0 and OUTPUT1 against the inputs.
func checkAddSub(label string, resp *pb.ModelInferResponse, in0, in1 []float32) {
	if resp.GetModelName() != *model {
		fail("%s: model_name %q, want %q", label, resp.GetModelName(), *model)
	}
	for _, check := range []struct {
		name string
		op   func(a, b float32) float32
		sym  string
	}{
		{"OUTPUT0", func(a, b float32) float32 { return a + b }, "+"},
		{"OUTPUT1", func(a, b float32) float32 { return a - b }, "-"},
	} {
		got, err := outputValues(resp, check.name)
		if err != nil {
			fail("%s: %v", label, err)
		}
		if len(got) != n {
			fail("%s: %s has %d values, want %d", label, check.name, len(got), n)
		}
		for i := range got {
			if want := check.op(in0[i], in1[i]); got[i] != want {
				fail("%s: %s[%d] = %v, want %v %s %v = %v", label, check.name, i, got[i], in0[i], check.sym, in1[i], want)
			}
		}
		pass("%s: %s = INPUT0 %s INPUT1, %d values %v", label, check.name, check.sym, n, got)
	}
}

func main() {
	flag.Parse()

	dialCtx, cancel := call()
	conn, err := grpc.DialContext(dialCtx, *addr, grpc.WithInsecure(), grpc.WithBlock())
	cancel()
	if err != nil {
		fail("connect %s: %v", *addr, err)
	}
	defer conn.Close()
	client := pb.NewGRPCInferenceServiceClient(conn)
	pass("connected to %s", *addr)

	ctx, cancel := call()
	live, err := client.ServerLive(ctx, &pb.ServerLiveRequest{})
	cancel()
	if err != nil || !live.GetLive() {
		fail("ServerLive: live=%v err=%v", live.GetLive(), err)
	}
	pass("ServerLive: live=true")

	ctx, cancel = call()
	ready, err := client.ServerReady(ctx, &pb.ServerReadyRequest{})
	cancel()
	if err != nil || !ready.GetReady() {
		fail("ServerReady: ready=%v err=%v", ready.GetReady(), err)
	}
	pass("ServerReady: ready=true")

	ctx, cancel = call()
	meta, err := client.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: *model})
	cancel()
	if err != nil {
		fail("ModelMetadata(%s): %v", *model, err)
	}
	inputs := map[string]string{}
	for _, t := range meta.GetInputs() {
		inputs[t.GetName()] = t.GetDatatype()
	}
	if len(inputs) != 2 || inputs["INPUT0"] != "FP32" || inputs["INPUT1"] != "FP32" {
		fail("ModelMetadata(%s): inputs %v, want INPUT0 and INPUT1 FP32", *model, meta.GetInputs())
	}
	outputs := map[string]string{}
	for _, t := range meta.GetOutputs() {
		outputs[t.GetName()] = t.GetDatatype()
	}
	if outputs["OUTPUT0"] != "FP32" || outputs["OUTPUT1"] != "FP32" {
		fail("ModelMetadata(%s): outputs %v, want OUTPUT0 and OUTPUT1 FP32", *model, meta.GetOutputs())
	}
	pass("ModelMetadata(%s): platform=%q versions=%v inputs INPUT0, INPUT1 FP32; outputs OUTPUT0, OUTPUT1 FP32",
		meta.GetName(), meta.GetPlatform(), meta.GetVersions())

	in0 := make([]float32, n)
	in1 := make([]float32, n)
	for i := range in0 {
		in0[i] = float32(i)
		in1[i] = 1
	}
	shape := []int64{1, n}

	// 1. raw_input_contents: little-endian float32 bytes, one entry per input in input order.
	rawReq := &pb.ModelInferRequest{
		ModelName: *model,
		Id:        "go-raw",
		Inputs: []*pb.ModelInferRequest_InferInputTensor{
			{Name: "INPUT0", Datatype: "FP32", Shape: shape},
			{Name: "INPUT1", Datatype: "FP32", Shape: shape},
		},
		Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{
			{Name: "OUTPUT0"},
			{Name: "OUTPUT1"},
		},
		RawInputContents: [][]byte{encodeFP32(in0), encodeFP32(in1)},
	}
	ctx, cancel = call()
	resp, err := client.ModelInfer(ctx, rawReq)
	cancel()
	if err != nil {
		fail("ModelInfer raw: %v", err)
	}
	if resp.GetId() != "go-raw" {
		fail("ModelInfer raw: id %q, want %q", resp.GetId(), "go-raw")
	}
	checkAddSub("ModelInfer raw", resp, in0, in1)

	// 2. typed contents: fp32_contents, no raw bytes; no requested outputs (the server returns all).
	typedReq := &pb.ModelInferRequest{
		ModelName: *model,
		Inputs: []*pb.ModelInferRequest_InferInputTensor{
			{Name: "INPUT0", Datatype: "FP32", Shape: shape, Contents: &pb.InferTensorContents{Fp32Contents: in0}},
			{Name: "INPUT1", Datatype: "FP32", Shape: shape, Contents: &pb.InferTensorContents{Fp32Contents: in1}},
		},
	}
	ctx, cancel = call()
	resp, err = client.ModelInfer(ctx, typedReq)
	cancel()
	if err != nil {
		fail("ModelInfer fp32_contents: %v", err)
	}
	checkAddSub("ModelInfer fp32_contents", resp, in0, in1)

	// 3. the wrong datatype (INT32 where the model takes FP32, same byte size) must be refused.
	badReq := &pb.ModelInferRequest{
		ModelName: *model,
		Inputs: []*pb.ModelInferRequest_InferInputTensor{
			{Name: "INPUT0", Datatype: "INT32", Shape: shape},
			{Name: "INPUT1", Datatype: "FP32", Shape: shape},
		},
		RawInputContents: [][]byte{make([]byte, 4*n), encodeFP32(in1)},
	}
	ctx, cancel = call()
	_, err = client.ModelInfer(ctx, badReq)
	cancel()
	if err == nil {
		fail("ModelInfer wrong datatype: INT32 for FP32 input INPUT0 was accepted, want InvalidArgument")
	}
	if st := status.Convert(err); st.Code() != codes.InvalidArgument {
		fail("ModelInfer wrong datatype: code %v (%q), want InvalidArgument", st.Code(), st.Message())
	} else {
		pass("ModelInfer wrong datatype: InvalidArgument %q", st.Message())
	}

	fmt.Println("OK")
}
