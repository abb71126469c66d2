package main

// The /sdk front: decodes each SOAP request with the simulator's own XML decoder and
// hands it to the simulator; adds QueryChangedDiskAreas (missing from the library) and
// CBT bookkeeping after CreateSnapshot_Task / ReconfigVM_Task.

import (
	"bytes"
	stdxml "encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

type sdkFront struct {
	st    *state
	inner http.Handler
}

func (f *sdkFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		f.inner.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// pass runs the request through the simulator, buffering the reply.
	pass := func() *httptest.ResponseRecorder {
		r2 := r.Clone(r.Context())
		r2.Body, r2.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		rec := httptest.NewRecorder()
		f.inner.ServeHTTP(rec, r2)
		return rec
	}
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		relay(w, pass())
		return
	}
	switch req := method.Body.(type) {
	case *types.QueryChangedDiskAreas:
		// The simulator checks the session and the object; for a valid call it can only
		// answer MethodNotFound, which is our cue to answer ourselves.
		rec := pass()
		if faultName(rec.Body.Bytes()) != "MethodNotFoundFault" {
			relay(w, rec)
			return
		}
		info, fault := f.st.queryChanged(req)
		if fault != nil {
			writeFault(w, fault)
			return
		}
		writeResponse(w, "QueryChangedDiskAreasResponse", info)
	case *types.CreateSnapshot_Task:
		f.st.epoch.Lock() // no guest write may fall between the snapshot and its changeIds
		defer f.st.epoch.Unlock()
		before := currentSnapshot(req.This)
		rec := pass()
		if after := currentSnapshot(req.This); rec.Code == http.StatusOK && after != nil &&
			(before == nil || *before != *after) {
			f.st.afterSnapshot(req.This, *after)
		}
		relay(w, rec)
	case *types.ReconfigVM_Task:
		rec := pass()
		if rec.Code == http.StatusOK {
			f.st.syncCBT(req.This)
		}
		relay(w, rec)
	case *types.RemoveSnapshot_Task, *types.RemoveAllSnapshots_Task, *types.Destroy_Task,
		*types.UnregisterVM, *types.RevertToSnapshot_Task, *types.RevertToCurrentSnapshot_Task:
		rec := pass()
		if x, ok := req.(*types.RemoveSnapshot_Task); ok {
			log.Printf("RemoveSnapshot_Task %s: HTTP %d %s", x.This.Value, rec.Code, faultName(rec.Body.Bytes()))
		}
		f.st.persist() // the saved snapshot tree follows
		relay(w, rec)
	default:
		relay(w, pass())
	}
}

func currentSnapshot(ref types.ManagedObjectReference) *types.ManagedObjectReference {
	vm := getVM(ref)
	if vm == nil {
		return nil
	}
	var cur *types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
			c := *vm.Snapshot.CurrentSnapshot
			cur = &c
		}
	})
	return cur
}

func relay(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// faultName returns the element name of a SOAP fault's detail (e.g. "MethodNotFoundFault").
func faultName(b []byte) string {
	var env struct {
		Body struct {
			Fault struct {
				Detail struct {
					Items []struct{ XMLName stdxml.Name } `xml:",any"`
				} `xml:"detail"`
			} `xml:"Fault"`
		} `xml:"Body"`
	}
	if stdxml.Unmarshal(b, &env) != nil || len(env.Body.Fault.Detail.Items) == 0 {
		return ""
	}
	return env.Body.Fault.Detail.Items[0].XMLName.Local
}

type envelope struct {
	XMLName xml.Name `xml:"soapenv:Envelope"`
	Env     string   `xml:"xmlns:soapenv,attr"`
	XSD     string   `xml:"xmlns:xsd,attr"`
	XSI     string   `xml:"xmlns:xsi,attr"`
	Body    struct {
		Content interface{} // encoded under its own XMLName
	} `xml:"soapenv:Body"`
}

func writeEnvelope(w http.ResponseWriter, code int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	env := &envelope{Env: "http://schemas.xmlsoap.org/soap/envelope/",
		XSD: "http://www.w3.org/2001/XMLSchema", XSI: "http://www.w3.org/2001/XMLSchema-instance"}
	env.Body.Content = body
	err := xml.NewEncoder(&out).Encode(env)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(out.Bytes())
}

type methodResponse struct {
	XMLName   xml.Name
	Returnval interface{} `xml:"returnval"`
}

func writeResponse(w http.ResponseWriter, name string, val interface{}) {
	writeEnvelope(w, http.StatusOK, &methodResponse{XMLName: xml.Name{Space: "urn:vim25", Local: name}, Returnval: val})
}

type faultDetail struct{ Fault types.BaseMethodFault }

// MarshalXML writes <XFault xmlns="urn:vim25" xsi:type="X">…</XFault> as vSphere does.
func (d *faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.Fault).Elem().Name()
	start.Name.Local = kind + "Fault"
	start.Attr = append(start.Attr, xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.Fault, start)
}

type soapFault struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault *faultDetail
	} `xml:"detail"`
}

func writeFault(w http.ResponseWriter, fault types.BaseMethodFault) {
	msg := "A general system error occurred"
	switch x := fault.(type) {
	case *types.InvalidArgument:
		msg = "A specified parameter was not correct: " + x.InvalidProperty
	case *types.FileFault:
		msg = "Error caused by file " + x.File
	case *types.ManagedObjectNotFound:
		msg = fmt.Sprintf("The object '%s:%s' has already been deleted or has not been completely created", x.Obj.Type, x.Obj.Value)
	}
	f := &soapFault{Code: "ServerFaultCode", String: msg}
	f.Detail.Fault = &faultDetail{fault}
	writeEnvelope(w, http.StatusInternalServerError, f)
}
