//! Test data made by the tests themselves: small Synthea-shaped transaction Bundles (urn:uuid
//! references, a shared Organization created with ifNoneExist and referenced conditionally)
//! and NDJSON files, with exactly known contents.

use serde_json::{Value, json};

pub const ORG_IDENTIFIER: &str = "urn:test:org|general-hospital";

pub fn patient_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn uuid(kind: u32, n: usize, i: usize) -> String {
    format!("{kind:08x}-{i:04x}-4000-9000-{n:012}")
}

/// A transaction Bundle for patient `n`: Organization (ifNoneExist), Patient, Encounter
/// (conditional reference to the Organization), and `observations` Observations.
pub fn patient_bundle(n: usize, observations: usize) -> Value {
    let pid = patient_id(n);
    let enc = uuid(2, n, 0);
    let mut entries = vec![
        json!({"fullUrl": format!("urn:uuid:{}", uuid(9, n, 0)),
               "resource": {"resourceType": "Organization", "name": "General Hospital",
                            "identifier": [{"system": "urn:test:org", "value": "general-hospital"}]},
               "request": {"method": "POST", "url": "Organization", "ifNoneExist": format!("identifier={ORG_IDENTIFIER}")}}),
        json!({"fullUrl": format!("urn:uuid:{pid}"),
               "resource": {"resourceType": "Patient", "name": [{"family": format!("Test{n}")}],
                            "birthDate": if n.is_multiple_of(2) { "1940-05-01" } else { "1980-05-01" }},
               "request": {"method": "POST", "url": "Patient"}}),
        json!({"fullUrl": format!("urn:uuid:{enc}"),
               "resource": {"resourceType": "Encounter", "status": "finished",
                            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                            "subject": {"reference": format!("urn:uuid:{pid}")},
                            "serviceProvider": {"reference": format!("Organization?identifier={ORG_IDENTIFIER}")}},
               "request": {"method": "POST", "url": "Encounter"}}),
    ];
    for i in 0..observations {
        entries.push(json!({"fullUrl": format!("urn:uuid:{}", uuid(3, n, i)),
            "resource": {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                         "subject": {"reference": format!("urn:uuid:{pid}")},
                         "encounter": {"reference": format!("urn:uuid:{enc}")},
                         "valueQuantity": {"value": 60 + i, "unit": "/min"}},
            "request": {"method": "POST", "url": "Observation"}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// One Observation line for patient `n` with id `obs-{tag}-{i}`, padded to about `pad` bytes.
pub fn observation_line(tag: &str, n: usize, i: usize, pad: usize) -> String {
    json!({"resourceType": "Observation", "id": format!("obs-{tag}-{i}"), "status": "final",
           "code": {"text": "x".repeat(pad)},
           "subject": {"reference": format!("Patient/{}", patient_id(n))}})
    .to_string()
}

pub fn patient_line(n: usize) -> String {
    json!({"resourceType": "Patient", "id": patient_id(n), "name": [{"family": format!("Nd{n}")}]})
        .to_string()
}

/// A batch Bundle of `PUT` Observations `lines` of patient `n` (as `observation_line` makes
/// them), serialised.
pub fn observation_batch(
    tag: &str,
    n: usize,
    lines: std::ops::Range<usize>,
    pad: usize,
) -> Vec<u8> {
    let entry: Vec<Value> = lines
        .map(|i| {
            json!({"resource": serde_json::from_str::<Value>(&observation_line(tag, n, i, pad)).unwrap(),
                   "request": {"method": "PUT", "url": format!("Observation/obs-{tag}-{i}")}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entry})
        .to_string()
        .into_bytes()
}

/// A zip archive holding `(name, content)` entries, deflated.
pub fn zip_of<N: AsRef<str>>(entries: &[(N, Vec<u8>)]) -> Vec<u8> {
    zip_with(entries, zip::CompressionMethod::Deflated)
}

/// The same, stored: the archive is as large as its entries.
pub fn stored_zip_of<N: AsRef<str>>(entries: &[(N, Vec<u8>)]) -> Vec<u8> {
    zip_with(entries, zip::CompressionMethod::Stored)
}

fn zip_with<N: AsRef<str>>(entries: &[(N, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    use std::io::Write;
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, content) in entries {
            w.start_file(name.as_ref(), opts).unwrap();
            w.write_all(content).unwrap();
        }
        w.finish().unwrap();
    }
    out.into_inner()
}

/// `text` gzip-compressed, as an `.ndjson.gz` file holds it.
pub fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}
