//! SOAP envelopes: requests serialized from serde structs (the method is an enum variant,
//! so its name is the element's), replies deserialized into serde structs, faults decoded
//! into `Fault`. PropertyCollector results carry values whose type depends on the
//! property path, so `decode_retrieve` walks that reply with quick-xml's reader, keeps
//! each `<val>` element as it came, and `Prop::decode` deserializes it into the type the
//! caller asks for.
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{Error, Fault, Result};
use super::types::*;

pub const NS_SOAPENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const NS_XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub const NS_XSD: &str = "http://www.w3.org/2001/XMLSchema";
pub const NS_VIM25: &str = "urn:vim25";

/// Every vim25 method osm calls.
#[derive(Serialize)]
pub enum Call<'a> {
    RetrieveServiceContent(This<'a>),
    Login(Login<'a>),
    Logout(This<'a>),
    SessionIsActive(SessionIsActive<'a>),
    CreateContainerView(CreateContainerView<'a>),
    DestroyView(This<'a>),
    RetrievePropertiesEx(RetrievePropertiesEx<'a>),
    ContinueRetrievePropertiesEx(ContinueRetrievePropertiesEx<'a>),
    #[serde(rename = "CreateSnapshot_Task")]
    CreateSnapshotTask(CreateSnapshot<'a>),
    #[serde(rename = "RemoveSnapshot_Task")]
    RemoveSnapshotTask(RemoveSnapshot<'a>),
    QueryChangedDiskAreas(QueryChangedDiskAreas<'a>),
    #[serde(rename = "ReconfigVM_Task")]
    ReconfigVmTask(ReconfigVm<'a>),
    ShutdownGuest(This<'a>),
    #[serde(rename = "PowerOffVM_Task")]
    PowerOffVmTask(This<'a>),
    #[serde(rename = "PowerOnVM_Task")]
    PowerOnVmTask(This<'a>),
    HasPrivilegeOnEntity(HasPrivilegeOnEntity<'a>),
}

impl Call<'_> {
    /// The method name, for errors and logs (never the arguments: Login carries the password).
    pub fn name(&self) -> &'static str {
        match self {
            Call::RetrieveServiceContent(_) => "RetrieveServiceContent",
            Call::Login(_) => "Login",
            Call::Logout(_) => "Logout",
            Call::SessionIsActive(_) => "SessionIsActive",
            Call::CreateContainerView(_) => "CreateContainerView",
            Call::DestroyView(_) => "DestroyView",
            Call::RetrievePropertiesEx(_) => "RetrievePropertiesEx",
            Call::ContinueRetrievePropertiesEx(_) => "ContinueRetrievePropertiesEx",
            Call::CreateSnapshotTask(_) => "CreateSnapshot_Task",
            Call::RemoveSnapshotTask(_) => "RemoveSnapshot_Task",
            Call::QueryChangedDiskAreas(_) => "QueryChangedDiskAreas",
            Call::ReconfigVmTask(_) => "ReconfigVM_Task",
            Call::ShutdownGuest(_) => "ShutdownGuest",
            Call::PowerOffVmTask(_) => "PowerOffVM_Task",
            Call::PowerOnVmTask(_) => "PowerOnVM_Task",
            Call::HasPrivilegeOnEntity(_) => "HasPrivilegeOnEntity",
        }
    }
}

#[derive(Serialize)]
#[serde(rename = "soapenv:Envelope")]
struct Envelope<'a> {
    #[serde(rename = "@xmlns:soapenv")]
    soapenv: &'static str,
    #[serde(rename = "@xmlns:xsi")]
    xsi: &'static str,
    #[serde(rename = "@xmlns:xsd")]
    xsd: &'static str,
    #[serde(rename = "@xmlns")]
    vim25: &'static str,
    #[serde(rename = "soapenv:Body")]
    body: OutBody<'a>,
}

#[derive(Serialize)]
struct OutBody<'a> {
    #[serde(rename = "$value")]
    call: &'a Call<'a>,
}

/// The request document.
pub fn encode(call: &Call<'_>) -> Result<String> {
    let env = Envelope {
        soapenv: NS_SOAPENV,
        xsi: NS_XSI,
        xsd: NS_XSD,
        vim25: NS_VIM25,
        body: OutBody { call },
    };
    let xml = quick_xml::se::to_string(&env).map_err(|e| Error::protocol(call.name(), e))?;
    Ok(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{xml}"))
}

#[derive(Deserialize)]
struct InEnvelope<T> {
    #[serde(rename = "Body")]
    body: InBody<T>,
}

#[derive(Deserialize)]
struct InBody<T> {
    #[serde(rename = "$value")]
    response: Response<T>,
}

#[derive(Deserialize)]
struct Response<T> {
    #[serde(default = "Vec::new")]
    returnval: Vec<T>,
}

/// All `returnval` elements of a method's response.
pub fn decode_all<T: DeserializeOwned>(method: &str, xml: &str) -> Result<Vec<T>> {
    let env: InEnvelope<T> = quick_xml::de::from_str(xml).map_err(|e| Error::protocol(method, e))?;
    Ok(env.body.response.returnval)
}

/// The single `returnval` of a response (an error when absent).
pub fn decode_one<T: DeserializeOwned>(method: &str, xml: &str) -> Result<T> {
    decode_all(method, xml)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::protocol(method, "the reply has no returnval"))
}

#[derive(Deserialize)]
struct FaultEnvelope {
    #[serde(rename = "Body")]
    body: FaultBody,
}

#[derive(Deserialize)]
struct FaultBody {
    #[serde(rename = "Fault")]
    fault: SoapFault,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SoapFault {
    faultcode: String,
    faultstring: String,
    detail: Option<FaultDetailWrap>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FaultDetailWrap {
    #[serde(rename = "$value")]
    fault: Option<FaultDetail>,
}

/// A SOAP fault reply, or None when the document is not one.
pub fn decode_fault(xml: &str) -> Option<Fault> {
    let env: FaultEnvelope = quick_xml::de::from_str(xml).ok()?;
    let f = env.body.fault;
    let d = f.detail.and_then(|d| d.fault).unwrap_or_default();
    let mut message = f.faultstring;
    if message.is_empty() {
        message = d
            .fault_message
            .iter()
            .map(|m| m.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
    }
    if message.is_empty() {
        message = f.faultcode;
    }
    Some(fault_of(d, message))
}

/// A `Fault` from a fault object and the message that came with it.
pub fn fault_of(d: FaultDetail, message: String) -> Fault {
    let kind = d.kind.rsplit(':').next().unwrap_or_default().to_string();
    let object = d.object.or(d.obj).or(d.task).map(|m| m.to_string()).or(d.file);
    Fault {
        kind,
        message,
        privilege: d.privilege_id,
        object,
    }
}

/// One object of a PropertyCollector result.
#[derive(Debug, Default)]
pub struct ObjectContent {
    pub obj: MoRef,
    pub props: Vec<Prop>,
}

impl ObjectContent {
    pub fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name == name)
    }

    /// Decode property `name` as T; None when absent (unset properties are not sent).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.prop(name).map(|p| p.decode()).transpose()
    }

    pub fn text(&self, name: &str) -> String {
        self.prop(name).map(|p| p.text()).unwrap_or_default()
    }

    pub fn parse<T: std::str::FromStr + Default>(&self, name: &str) -> T {
        self.prop(name)
            .and_then(|p| p.text().trim().parse().ok())
            .unwrap_or_default()
    }

    pub fn moref(&self, name: &str) -> Option<MoRef> {
        self.get::<MoRef>(name).ok().flatten()
    }
}

/// A `propSet` entry: the path and its `<val>` element, undecoded.
#[derive(Debug, Default, Clone)]
pub struct Prop {
    pub name: String,
    pub val: String,
}

impl Prop {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        quick_xml::de::from_str(&self.val).map_err(|e| Error::protocol(&format!("property {}", self.name), e))
    }

    pub fn text(&self) -> String {
        self.decode::<Text>().map(|t| t.text).unwrap_or_default()
    }
}

/// The `returnval` of RetrievePropertiesEx / ContinueRetrievePropertiesEx.
#[derive(Debug, Default)]
pub struct RetrieveResult {
    pub token: Option<String>,
    pub objects: Vec<ObjectContent>,
}

/// Walk a RetrievePropertiesEx reply: Envelope/Body/*Response/returnval/{token, objects*}.
/// An empty response (no returnval: nothing matched) is an empty result.
pub fn decode_retrieve(xml: &str) -> Result<RetrieveResult> {
    let bad = |e: &dyn std::fmt::Display| Error::protocol("RetrievePropertiesEx", e);
    let mut r = Reader::from_str(xml);
    let mut out = RetrieveResult::default();
    // Path of local names from the root; elements at depth 4 under returnval are read.
    let mut path: Vec<String> = Vec::new();
    loop {
        let before = r.buffer_position() as usize;
        let ev = r.read_event().map_err(|e| bad(&e))?;
        match ev {
            Event::Start(s) => {
                let name = local(&s);
                let in_returnval = path.len() == 3 && path[2].ends_with("Response") && name == "returnval";
                if path.len() == 4 && path[3] == "returnval" {
                    match name.as_str() {
                        "token" => {
                            let t = r.read_text(s.name()).map_err(|e| bad(&e))?;
                            out.token = Some(unescape(&t)?);
                            continue;
                        }
                        "objects" => {
                            out.objects.push(read_object(&mut r, xml)?);
                            continue;
                        }
                        _ => {
                            r.read_to_end(s.name()).map_err(|e| bad(&e))?;
                            continue;
                        }
                    }
                }
                if path.len() >= 4 && !in_returnval {
                    r.read_to_end(s.name()).map_err(|e| bad(&e))?;
                    continue;
                }
                let _ = before;
                path.push(name);
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if path.is_empty() {
        Ok(out)
    } else {
        Err(bad(&"the document ends inside an element"))
    }
}

fn local(s: &BytesStart) -> String {
    String::from_utf8_lossy(s.local_name().as_ref()).into_owned()
}

fn unescape(t: &str) -> Result<String> {
    quick_xml::escape::unescape(t)
        .map(|c| c.into_owned())
        .map_err(|e| Error::protocol("RetrievePropertiesEx", e))
}

fn read_object(r: &mut Reader<&[u8]>, xml: &str) -> Result<ObjectContent> {
    let bad = |e: &dyn std::fmt::Display| Error::protocol("RetrievePropertiesEx objects", e);
    let mut oc = ObjectContent::default();
    loop {
        let before = r.buffer_position() as usize;
        match r.read_event().map_err(|e| bad(&e))? {
            Event::Start(s) => match local(&s).as_str() {
                "obj" => {
                    let span = r.read_to_end(s.name()).map_err(|e| bad(&e))?;
                    let end = r.buffer_position() as usize;
                    let _ = span;
                    oc.obj = quick_xml::de::from_str(slice(xml, before, end)?).map_err(|e| bad(&e))?;
                }
                "propSet" => oc.props.push(read_prop(r, xml)?),
                _ => {
                    r.read_to_end(s.name()).map_err(|e| bad(&e))?;
                }
            },
            Event::End(_) => return Ok(oc),
            Event::Eof => return Err(bad(&"the document ends inside objects")),
            _ => {}
        }
    }
}

fn read_prop(r: &mut Reader<&[u8]>, xml: &str) -> Result<Prop> {
    let bad = |e: &dyn std::fmt::Display| Error::protocol("RetrievePropertiesEx propSet", e);
    let mut p = Prop::default();
    loop {
        let before = r.buffer_position() as usize;
        match r.read_event().map_err(|e| bad(&e))? {
            Event::Start(s) => match local(&s).as_str() {
                "name" => {
                    let t = r.read_text(s.name()).map_err(|e| bad(&e))?;
                    p.name = unescape(&t)?;
                }
                "val" => {
                    r.read_to_end(s.name()).map_err(|e| bad(&e))?;
                    let end = r.buffer_position() as usize;
                    p.val = slice(xml, before, end)?.to_string();
                }
                _ => {
                    r.read_to_end(s.name()).map_err(|e| bad(&e))?;
                }
            },
            Event::Empty(s) if local(&s) == "val" => {
                let end = r.buffer_position() as usize;
                p.val = slice(xml, before, end)?.to_string();
            }
            Event::End(_) => return Ok(p),
            Event::Eof => return Err(bad(&"the document ends inside propSet")),
            _ => {}
        }
    }
}

/// `xml[a..b]` trimmed of the whitespace the reader counted before the tag.
fn slice(xml: &str, a: usize, b: usize) -> Result<&str> {
    xml.get(a..b)
        .map(str::trim_start)
        .ok_or_else(|| Error::protocol("RetrievePropertiesEx", "element boundaries outside the document"))
}
