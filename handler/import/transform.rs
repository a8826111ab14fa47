//! Turning an uploaded `transaction` or `batch` Bundle into idempotent batch entries.
//!
//! Every entry that creates a resource becomes `PUT Type/id` with an id fixed by its content:
//! the `urn:uuid` of its fullUrl, the id of an absolute fullUrl, the id the server already has
//! for its `ifNoneExist` criteria, or a name-based UUID. Loading the same file twice therefore
//! writes the same resources twice and creates no duplicates. Every reference anywhere is then
//! rewritten to `Type/id`; conditional references (`Practitioner?identifier=...`) are resolved
//! by search, and one that matches nothing is an entry error, not a dangling reference.

use std::borrow::Cow;

use async_trait::async_trait;
use rustc_hash::FxHashMap;
use uuid::Uuid;

use super::bundle_text::{RawBundle, RawEntry, RequestHead, ResourceHead, static_dependencies};
use super::raw_json::{ResourceScan, push_json_string, rewrite_into, scan_resource};
use super::references::{ReferenceForm, classify, is_fhir_id, is_resource_type, relative_from_url};

/// Namespace for ids this loader derives (UUID v5), so they are stable across runs.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b1e_8a3d_4c55_9e0f_4b7d_1a2c_3e4f);

/// Finds the ids of resources matching `Type?query` on the server.
#[async_trait]
pub trait SearchResolver: Send + Sync {
    async fn find_ids(&self, resource_type: &str, query: &str) -> Result<Vec<String>, String>;
}

/// One entry ready to send in a batch.
#[derive(Clone, Debug)]
pub struct PreparedEntry {
    /// Position in the uploaded Bundle (for error records).
    pub index: usize,
    /// `Type/id` when the entry writes a resource.
    pub target: Option<String>,
    /// The batch entry, serialised: `{"resource": ..., "request": ...}`.
    pub json: String,
}

/// An entry that was not loaded, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryFailure {
    pub index: usize,
    pub target: Option<String>,
    /// HTTP status from the server, or 0 when the entry was refused before sending.
    pub status: u16,
    pub diagnostics: String,
}

#[derive(Debug, Default)]
pub struct PreparedBundle {
    /// One slot per uploaded entry, by position: `Some` when it is to be sent.
    pub slots: Vec<Option<PreparedEntry>>,
    /// For each entry, the positions of the entries of this Bundle it references, read from
    /// the file alone (fullUrls, ids, ifNoneExist criteria) so that it is the same on every try.
    pub deps: Vec<Vec<usize>>,
    pub failures: Vec<EntryFailure>,
    /// Entries whose `ifNoneExist` matched a resource the server already has.
    pub already_present: usize,
}

impl PreparedBundle {
    /// The entries to send, in upload order.
    pub fn entries(&self) -> Vec<&PreparedEntry> {
        self.slots.iter().flatten().collect()
    }
}

/// How one entry writes, decided in the first pass (strings borrowed from the file where
/// they can be).
enum Plan<'a> {
    /// Write `Type/id`.
    Write {
        resource_type: Cow<'a, str>,
        id: Cow<'a, str>,
    },
    /// `ifNoneExist` matched: the server has it as `Type/id`; nothing to send.
    Present {
        resource_type: Cow<'a, str>,
        id: Cow<'a, str>,
    },
    /// Send unchanged (DELETE, GET, PATCH ...).
    AsIs,
    Failed(String),
}

/// Prepares the entries of a Bundle's text.
#[cfg(test)]
pub async fn prepare(text: &str, resolver: &dyn SearchResolver) -> Result<PreparedBundle, String> {
    let (_, bundle) = super::bundle_text::read_bundle(text)?;
    prepare_bundle(bundle, resolver).await
}

/// What references to this Bundle's entries point at once they are written: `Type/id` by
/// entry, found by fullUrl or by the `Type/id` the file gave the resource.
struct Targets<'a> {
    by_entry: Vec<Option<String>>,
    full_urls: FxHashMap<&'a str, usize>,
    ids: FxHashMap<(&'a str, &'a str), usize>,
}

impl Targets<'_> {
    /// The new `Type/id` of the entry a reference names as written, if it names one.
    fn of(&self, reference: &str) -> Option<&str> {
        let entry = self.full_urls.get(reference).copied().or_else(|| {
            let (ty, id) = reference.split_once('/')?;
            (!id.contains('/'))
                .then(|| self.ids.get(&(ty, id)).copied())
                .flatten()
        })?;
        self.by_entry[entry].as_deref()
    }
}

/// Prepares the entries of a Bundle read by `read_bundle`: pass 1 decides how each entry
/// writes and what its fullUrl and `Type/id` will point at (`plan_entries`), pass 2 rewrites
/// the references in each resource's text and serialises the batch entries.
pub(crate) async fn prepare_bundle(
    bundle: RawBundle<'_>,
    resolver: &dyn SearchResolver,
) -> Result<PreparedBundle, String> {
    let entries = bundle.entry;
    // One scan per resource finds its head and its references (serde has already checked it).
    let scans: Vec<ResourceScan> = entries
        .iter()
        .map(|e| {
            e.resource
                .map(|r| scan_resource(r.get()))
                .unwrap_or_default()
        })
        .collect();
    let heads: Vec<Option<ResourceHead>> = entries
        .iter()
        .zip(&scans)
        .map(|(e, scan)| e.resource.and_then(|_| ResourceHead::of(scan)))
        .collect();
    let requests: Vec<_> = entries.iter().map(RawEntry::request_head).collect();
    let mut out = PreparedBundle {
        slots: (0..entries.len()).map(|_| None).collect(),
        deps: static_dependencies(&entries, &requests, &heads, &scans),
        ..Default::default()
    };
    let mut criteria_ids: FxHashMap<String, String> = FxHashMap::default();
    let (plans, targets) = plan_entries(
        &entries,
        &requests,
        &heads,
        &scans,
        resolver,
        &mut criteria_ids,
    )
    .await;
    let mut rewriter = Rewriter {
        targets: &targets,
        criteria_ids: &criteria_ids,
        resolver,
        conditional_cache: FxHashMap::default(),
        replacements: Vec::new(),
    };
    for (index, ((entry, plan), scan)) in entries.iter().zip(&plans).zip(&scans).enumerate() {
        match plan {
            Plan::Failed(reason) => out.failures.push(EntryFailure {
                index,
                target: None,
                status: 0,
                diagnostics: reason.clone(),
            }),
            Plan::Present { .. } => out.already_present += 1,
            Plan::AsIs => out.slots[index] = Some(as_is(index, entry)),
            Plan::Write { id, .. } => match rewriter.write(index, entry, scan, id).await {
                Ok(prepared) => out.slots[index] = Some(prepared),
                Err(failure) => out.failures.push(failure),
            },
        }
    }
    // The targets move into the entries that write them.
    for (slot, target) in out.slots.iter_mut().zip(targets.by_entry) {
        if let Some(entry) = slot {
            entry.target = target;
        }
    }
    Ok(out)
}

/// Pass 1: how each entry writes, and what each fullUrl and `Type/id` of the file will point
/// at once written. Text the server cannot store faithfully, a second entry of one fullUrl and
/// a second write of one resource fail their entry alone.
async fn plan_entries<'a, 'h>(
    entries: &'h [RawEntry<'a>],
    requests: &[Option<Result<RequestHead<'a>, String>>],
    heads: &'h [Option<ResourceHead<'a>>],
    scans: &[ResourceScan<'a>],
    resolver: &dyn SearchResolver,
    criteria_ids: &mut FxHashMap<String, String>,
) -> (Vec<Plan<'a>>, Targets<'h>) {
    let mut targets = Targets {
        by_entry: Vec::with_capacity(entries.len()),
        full_urls: FxHashMap::default(),
        ids: FxHashMap::default(),
    };
    targets.full_urls.reserve(entries.len());
    let mut plans = Vec::with_capacity(entries.len());
    let mut firsts = Firsts::default();
    for (index, ((entry, head), request)) in entries.iter().zip(heads).zip(requests).enumerate() {
        let mut plan = plan_entry(
            index,
            entry,
            request.as_ref(),
            head.as_ref(),
            resolver,
            criteria_ids,
        )
        .await;
        // Text the server cannot store faithfully fails its entry alone, before it is sent.
        let hazard = match plan {
            Plan::Write { .. } | Plan::AsIs => entry
                .resource
                .and_then(|_| scans[index].hazard())
                .or_else(|| entry.request.and_then(|r| scan_resource(r.get()).hazard())),
            _ => None,
        };
        if let Some(hazard) = hazard {
            plan = Plan::Failed(format!("entry {index}: {hazard}"));
        }
        let plan = firsts.check(index, entry, plan);
        let mut target = None;
        if let Plan::Write { resource_type, id } | Plan::Present { resource_type, id } = &plan {
            target = Some(format!("{resource_type}/{id}"));
            if let Some(full_url) = entry.full_url.as_deref() {
                targets.full_urls.entry(full_url).or_insert(index);
            }
            if let Some(ResourceHead {
                resource_type: Some(ty),
                id: Some(old_id),
            }) = head
            {
                targets.ids.entry((ty, old_id)).or_insert(index);
            }
        }
        targets.by_entry.push(target);
        plans.push(plan);
    }
    (plans, targets)
}

/// The first entry of each fullUrl and of each resource written: a second one would leave
/// the server with one resource where the file counts two.
#[derive(Default)]
struct Firsts<'h> {
    of_full_url: FxHashMap<&'h str, usize>,
    writer: FxHashMap<String, usize>,
}

impl<'h> Firsts<'h> {
    /// `plan`, or a failure when entry `index` repeats an earlier entry's fullUrl or write.
    fn check<'a>(&mut self, index: usize, entry: &'h RawEntry<'a>, plan: Plan<'a>) -> Plan<'a> {
        if let Some(full_url) = entry.full_url.as_deref().filter(|u| !u.is_empty())
            && let Some(&first) = self.of_full_url.get(full_url)
        {
            return Plan::Failed(format!(
                "entry {index} has the fullUrl {full_url} of entry {first}; fullUrls must be unique within a Bundle, so this entry is not loaded"
            ));
        }
        if let Some(full_url) = entry.full_url.as_deref().filter(|u| !u.is_empty()) {
            self.of_full_url.insert(full_url, index);
        }
        if let Plan::Write { resource_type, id } = &plan {
            let target = format!("{resource_type}/{id}");
            if let Some(&first) = self.writer.get(&target) {
                return Plan::Failed(format!(
                    "entry {index} writes {target}, as entry {first} of this Bundle does; a Bundle may write a resource once, so this entry is not loaded"
                ));
            }
            self.writer.insert(target, index);
        }
        plan
    }
}

/// An entry sent unchanged (DELETE, GET, PATCH ...).
fn as_is(index: usize, entry: &RawEntry<'_>) -> PreparedEntry {
    let request = entry.request.map_or("null", |r| r.get());
    let json = match entry.resource {
        Some(r) => format!(r#"{{"resource":{},"request":{request}}}"#, r.get()),
        None => format!(r#"{{"request":{request}}}"#),
    };
    PreparedEntry {
        index,
        target: None,
        json,
    }
}

/// Pass 2 for the entries that write: each reference in a resource's text pointed at what it
/// names once loaded (conditional references searched once per Bundle), and the batch entry
/// serialised around the rewritten text.
struct Rewriter<'t, 'h, 's> {
    targets: &'t Targets<'h>,
    criteria_ids: &'t FxHashMap<String, String>,
    resolver: &'t dyn SearchResolver,
    conditional_cache: FxHashMap<String, Result<String, String>>,
    /// A resource has few references: a list searched in order beats a map (reused per entry).
    replacements: Vec<(&'s str, Cow<'t, str>)>,
}

impl<'t, 's> Rewriter<'t, '_, 's> {
    /// The batch entry writing entry `index` as `id`, or why it cannot be written (a reference
    /// that points nowhere it can resolve).
    async fn write(
        &mut self,
        index: usize,
        entry: &RawEntry<'_>,
        scan: &'s ResourceScan<'_>,
        id: &str,
    ) -> Result<PreparedEntry, EntryFailure> {
        let target = self.targets.by_entry[index]
            .as_deref()
            .expect("planned writes have a target");
        let text = entry
            .resource
            .expect("planned writes have a resource")
            .get();
        let problems = self.find_replacements(scan).await;
        if !problems.is_empty() {
            return Err(EntryFailure {
                index,
                target: Some(target.to_string()),
                status: 0,
                diagnostics: problems.join("; "),
            });
        }
        let replace = |r: &str| {
            self.replacements
                .iter()
                .find(|(from, _)| *from == r)
                .map(|(_, t)| t.as_ref())
        };
        Ok(PreparedEntry {
            index,
            json: put_entry_json(target, text.len(), |json| {
                rewrite_into(json, text, scan, replace, id)
            }),
            target: None,
        })
    }

    /// Fills `replacements` with what each reference of `scan` becomes; the problems found.
    async fn find_replacements(&mut self, scan: &'s ResourceScan<'_>) -> Vec<String> {
        self.replacements.clear();
        let mut problems = Vec::new();
        for reference in &scan.references {
            let r = reference.value.as_ref();
            let to = match classify(r) {
                ReferenceForm::Urn(_) | ReferenceForm::Absolute(_) => {
                    let to = self.targets.of(r);
                    if to.is_none() && r.starts_with("urn:uuid:") {
                        problems.push(format!("reference {r} points to no entry of this Bundle"));
                    }
                    to.map(Cow::Borrowed)
                }
                ReferenceForm::Relative { .. } => self.targets.of(r).map(Cow::Borrowed),
                // Conditional references need a search (cached per Bundle).
                ReferenceForm::Conditional { .. } => match self.resolve(r).await {
                    Ok(t) => Some(Cow::Owned(t)),
                    Err(e) => {
                        problems.push(e);
                        None
                    }
                },
                ReferenceForm::Contained | ReferenceForm::Other => None,
            };
            if let Some(to) = to {
                self.replacements.push((r, to));
            }
        }
        problems
    }

    async fn resolve(&mut self, reference: &str) -> Result<String, String> {
        if let Some(known) = self.conditional_cache.get(reference) {
            return known.clone();
        }
        let found = resolve_conditional(reference, self.criteria_ids, self.resolver).await;
        self.conditional_cache
            .insert(reference.to_string(), found.clone());
        found
    }
}

/// `{"resource": <text>, "request": {"method": "PUT", "url": "Type/id"}}`, the resource
/// written in place by `resource` (one buffer per entry, sized for `resource_len` bytes of
/// resource: no copy of the resource, no regrowth).
pub fn put_entry_json(
    target: &str,
    resource_len: usize,
    resource: impl FnOnce(&mut String),
) -> String {
    const FRAME: usize = r#"{"resource":,"request":{"method":"PUT","url":""}}"#.len();
    let mut json = String::with_capacity(FRAME + resource_len + target.len() + 64);
    json.push_str(r#"{"resource":"#);
    resource(&mut json);
    json.push_str(r#","request":{"method":"PUT","url":"#);
    push_json_string(&mut json, target);
    json.push_str("}}");
    json
}

async fn plan_entry<'a>(
    index: usize,
    entry: &RawEntry<'a>,
    request: Option<&Result<RequestHead<'a>, String>>,
    head: Option<&ResourceHead<'a>>,
    resolver: &dyn SearchResolver,
    criteria_ids: &mut FxHashMap<String, String>,
) -> Plan<'a> {
    let request = match request {
        Some(Ok(request)) => request,
        Some(Err(problem)) => return Plan::Failed(format!("entry {index}: {problem}")),
        None => {
            return Plan::Failed(format!(
                "entry {index} has no request (method and url are required)"
            ));
        }
    };
    let method = request.method.as_deref().unwrap_or("");
    let is_post = method.eq_ignore_ascii_case("POST");
    if !is_post && !method.eq_ignore_ascii_case("PUT") {
        return Plan::AsIs;
    }
    let (Some(resource), Some(head)) = (entry.resource, head) else {
        return Plan::Failed(format!(
            "entry {index} is a {} without a resource",
            method.to_ascii_uppercase()
        ));
    };
    let Some(resource_type) = head
        .resource_type
        .as_ref()
        .filter(|t| is_resource_type(t))
        .cloned()
    else {
        return Plan::Failed(format!(
            "entry {index} has a resource without a valid resourceType"
        ));
    };
    let url = request.url.as_deref().unwrap_or("");

    // Conditional create and conditional update: the server's match decides the id.
    let criteria = if is_post {
        request
            .if_none_exist
            .as_deref()
            .map(|q| q.trim_start_matches('?'))
    } else {
        url.split_once('?').map(|(_, q)| q)
    };
    if let Some(query) = criteria.filter(|q| !q.is_empty()) {
        return plan_conditional(resource_type, query, is_post, resolver, criteria_ids).await;
    }

    if !is_post {
        // An update names its resource: `PUT Type/id` writes exactly that id, whatever the
        // fullUrl says, so that anything outside the file that points at it still resolves.
        return match update_id(url, &resource_type) {
            Ok(id) => Plan::Write {
                resource_type,
                id: Cow::Owned(id.to_string()),
            },
            Err(problem) => Plan::Failed(format!("entry {index}: {problem}")),
        };
    }
    let id = create_id(entry.full_url.as_ref(), &resource_type, head)
        .unwrap_or_else(|| Cow::Owned(content_id(&resource_type, resource.get(), index)));
    Plan::Write { resource_type, id }
}

/// A conditional create (`ifNoneExist`) or update (`PUT Type?query`): the server's match, or
/// its absence, decides the id, the same for the same criteria anywhere in the Bundle.
async fn plan_conditional<'a>(
    resource_type: Cow<'a, str>,
    query: &str,
    is_post: bool,
    resolver: &dyn SearchResolver,
    criteria_ids: &mut FxHashMap<String, String>,
) -> Plan<'a> {
    let key = format!("{resource_type}?{query}");
    if let Some(id) = criteria_ids.get(&key) {
        // The same criteria earlier in this Bundle: one resource, not two.
        return Plan::Present {
            resource_type,
            id: Cow::Owned(id.clone()),
        };
    }
    match resolver.find_ids(&resource_type, query).await {
        Ok(mut ids) if ids.len() == 1 => {
            let id = ids.pop().expect("one id");
            criteria_ids.insert(key, id.clone());
            let id = Cow::Owned(id);
            if is_post {
                Plan::Present { resource_type, id }
            } else {
                Plan::Write { resource_type, id }
            }
        }
        Ok(ids) if ids.is_empty() => {
            let id = derived_id(&key);
            criteria_ids.insert(key, id.clone());
            Plan::Write {
                resource_type,
                id: Cow::Owned(id),
            }
        }
        Ok(ids) => Plan::Failed(format!(
            "{key} matches {} resources on the server; the criteria must select one (412)",
            ids.len()
        )),
        Err(e) => Plan::Failed(format!("cannot search {key}: {e}")),
    }
}

/// The id of `PUT Type/id` (an update without criteria), or why the url names none.
fn update_id<'u>(url: &'u str, resource_type: &str) -> Result<&'u str, String> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .trim_matches('/');
    let Some((ty, id)) = path.split_once('/') else {
        return Err(format!(
            "PUT {url} names no resource id; an update needs {resource_type}/<id> (or search criteria)"
        ));
    };
    if ty != resource_type {
        return Err(format!(
            "PUT {url} carries a {resource_type}; the url must name the same type"
        ));
    }
    if !is_fhir_id(id) {
        return Err(format!(
            "PUT {url}: {id:?} is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"
        ));
    }
    Ok(id)
}

/// The id the file gives a created resource (`POST`): the `urn:uuid` of its fullUrl, the id of
/// an absolute fullUrl, or the resource's own id.
fn create_id<'a>(
    full_url: Option<&Cow<'a, str>>,
    resource_type: &str,
    head: &ResourceHead<'a>,
) -> Option<Cow<'a, str>> {
    if let Some(full_url) = full_url {
        if let Some(uuid) = full_url.strip_prefix("urn:uuid:").filter(|u| is_fhir_id(u)) {
            return Some(part_of(full_url, uuid));
        }
        if let Some((_, id)) = relative_from_url(full_url).filter(|(ty, _)| *ty == resource_type) {
            return Some(part_of(full_url, id));
        }
    }
    head.id.as_ref().filter(|i| is_fhir_id(i)).cloned()
}

/// `part`, a slice of `whole`, borrowed from the file when `whole` is.
fn part_of<'a>(whole: &Cow<'a, str>, part: &str) -> Cow<'a, str> {
    match whole {
        Cow::Borrowed(text) => {
            let start = part.as_ptr() as usize - text.as_ptr() as usize;
            Cow::Borrowed(&text[start..start + part.len()])
        }
        Cow::Owned(_) => Cow::Owned(part.to_string()),
    }
}

async fn resolve_conditional(
    reference: &str,
    criteria_ids: &FxHashMap<String, String>,
    resolver: &dyn SearchResolver,
) -> Result<String, String> {
    let (resource_type, query) = reference
        .split_once('?')
        .expect("classified as conditional");
    if let Some(id) = criteria_ids.get(reference) {
        return Ok(format!("{resource_type}/{id}"));
    }
    match resolver.find_ids(resource_type, query).await {
        Ok(ids) if ids.len() == 1 => Ok(format!("{resource_type}/{}", ids[0])),
        Ok(ids) if ids.is_empty() => Err(format!(
            "conditional reference {reference} matches no resource on the server (load the Bundle that creates it first)"
        )),
        Ok(ids) => Err(format!(
            "conditional reference {reference} matches {} resources; it must match one",
            ids.len()
        )),
        Err(e) => Err(format!(
            "cannot resolve conditional reference {reference}: {e}"
        )),
    }
}

/// A stable id for a name (criteria or content), as a UUID v5.
pub fn derived_id(name: &str) -> String {
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The id of a resource that came without one: derived from its content and position, so a
/// re-upload of the same file maps to the same resource.
fn content_id(resource_type: &str, resource_text: &str, index: usize) -> String {
    derived_id(&format!("{resource_type}#{index}#{resource_text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn entry(e: &PreparedEntry) -> Value {
        serde_json::from_str(&e.json).expect("prepared entries are JSON")
    }

    /// Answers searches from a fixed table and counts them.
    #[derive(Default)]
    struct FakeServer {
        matches: HashMap<String, Vec<String>>,
        searches: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl SearchResolver for FakeServer {
        async fn find_ids(&self, ty: &str, query: &str) -> Result<Vec<String>, String> {
            let key = format!("{ty}?{query}");
            self.searches.lock().unwrap().push(key.clone());
            Ok(self.matches.get(&key).cloned().unwrap_or_default())
        }
    }

    fn server(pairs: &[(&str, &[&str])]) -> FakeServer {
        FakeServer {
            matches: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            ..Default::default()
        }
    }

    fn txn(entries: Value) -> Value {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    }

    #[tokio::test]
    async fn urn_uuids_become_put_ids_and_every_reference_is_rewritten() {
        let b = txn(json!([
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
             "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
             "resource": {"resourceType": "Encounter",
                          "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
             "request": {"method": "POST", "url": "Encounter"}},
            {"fullUrl": "https://example.org/fhir/Observation/obs-1",
             "resource": {"resourceType": "Observation",
                          "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                          "encounter": {"reference": "urn:uuid:22222222-2222-2222-2222-222222222222"},
                          "derivedFrom": [{"reference": "https://example.org/fhir/Observation/obs-1"}],
                          "extension": [{"url": "x", "valueReference": {"reference": "Organization/org-9"}}]},
             "request": {"method": "POST", "url": "Observation"}}
        ]));
        let p = prepare(&b.to_string(), &server(&[])).await.unwrap();
        assert!(p.failures.is_empty(), "{:?}", p.failures);
        let targets: Vec<_> = p
            .entries()
            .iter()
            .map(|e| e.target.clone().unwrap())
            .collect();
        assert_eq!(
            targets,
            vec![
                "Patient/11111111-1111-1111-1111-111111111111",
                "Encounter/22222222-2222-2222-2222-222222222222",
                "Observation/obs-1"
            ]
        );
        let obs = &entry(p.entries()[2]);
        assert_eq!(
            obs["request"],
            json!({"method": "PUT", "url": "Observation/obs-1"})
        );
        assert_eq!(obs["resource"]["id"], "obs-1");
        assert_eq!(
            obs["resource"]["subject"]["reference"],
            "Patient/11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(
            obs["resource"]["encounter"]["reference"],
            "Encounter/22222222-2222-2222-2222-222222222222"
        );
        assert_eq!(
            obs["resource"]["derivedFrom"][0]["reference"],
            "Observation/obs-1"
        );
        assert_eq!(
            obs["resource"]["extension"][0]["valueReference"]["reference"],
            "Organization/org-9"
        );
        assert_eq!(
            p.deps[2],
            vec![0, 1],
            "the Observation references the Patient and Encounter"
        );
    }

    #[tokio::test]
    async fn if_none_exist_matches_point_references_at_the_existing_resource() {
        let b = txn(json!([
            {"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001",
             "resource": {"resourceType": "Practitioner"},
             "request": {"method": "POST", "url": "Practitioner",
                         "ifNoneExist": "identifier=http://hl7.org/fhir/sid/us-npi|999"}},
            {"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000002",
             "resource": {"resourceType": "Encounter",
                          "participant": [{"individual": {"reference": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001"}}]},
             "request": {"method": "POST", "url": "Encounter"}}
        ]));
        let fake = server(&[(
            "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999",
            &["pr-7"],
        )]);
        let p = prepare(&b.to_string(), &fake).await.unwrap();
        assert_eq!(
            p.already_present, 1,
            "the existing Practitioner is not written again"
        );
        assert_eq!(p.entries().len(), 1);
        assert_eq!(
            entry(p.entries()[0])["resource"]["participant"][0]["individual"]["reference"],
            "Practitioner/pr-7"
        );
    }

    #[tokio::test]
    async fn if_none_exist_without_match_gets_a_stable_id_and_same_criteria_is_written_once() {
        let entry = json!({"resource": {"resourceType": "Organization"},
            "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=x|1"}});
        let b = txn(json!([entry.clone(), entry]));
        let p = prepare(&b.to_string(), &server(&[])).await.unwrap();
        assert_eq!(p.entries().len(), 1);
        assert_eq!(p.already_present, 1);
        let again = prepare(&b.to_string(), &server(&[])).await.unwrap();
        assert_eq!(
            p.entries()[0].target,
            again.entries()[0].target,
            "stable across runs"
        );
        let ambiguous = server(&[("Organization?identifier=x|1", &["a", "b"])]);
        let p = prepare(&b.to_string(), &ambiguous).await.unwrap();
        assert!(
            p.failures[0].diagnostics.contains("matches 2"),
            "{:?}",
            p.failures
        );
    }

    #[tokio::test]
    async fn conditional_references_resolve_by_search_or_fail_the_entry() {
        let b = txn(json!([
            {"fullUrl": "urn:uuid:c1", "resource": {"resourceType": "Encounter",
                "serviceProvider": {"reference": "Organization?identifier=https://github.com/synthetichealth/synthea|org-1"},
                "participant": [{"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1"}}]},
             "request": {"method": "POST", "url": "Encounter"}},
            {"fullUrl": "urn:uuid:c2", "resource": {"resourceType": "Claim",
                "provider": {"reference": "Organization?identifier=https://github.com/synthetichealth/synthea|org-1"}},
             "request": {"method": "POST", "url": "Claim"}}
        ]));
        let fake = server(&[(
            "Organization?identifier=https://github.com/synthetichealth/synthea|org-1",
            &["org-1"],
        )]);
        let p = prepare(&b.to_string(), &fake).await.unwrap();
        assert_eq!(p.entries().len(), 1, "the Claim resolves");
        assert_eq!(
            entry(p.entries()[0])["resource"]["provider"]["reference"],
            "Organization/org-1"
        );
        assert_eq!(
            p.failures.len(),
            1,
            "the Encounter's Practitioner matches nothing"
        );
        assert_eq!(p.failures[0].index, 0);
        assert!(p.failures[0].diagnostics.contains("us-npi|1"));
        let searches = fake.searches.lock().unwrap();
        assert_eq!(
            searches
                .iter()
                .filter(|s| s.starts_with("Organization"))
                .count(),
            1,
            "conditional lookups are cached within a Bundle"
        );
    }

    #[tokio::test]
    async fn dangling_urn_references_and_entries_without_request_are_errors() {
        let b = txn(json!([
            {"fullUrl": "urn:uuid:d1", "resource": {"resourceType": "Observation",
                "subject": {"reference": "urn:uuid:not-here"}}, "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Patient"}},
            {"request": {"method": "DELETE", "url": "Patient/old"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": 5}},
            {"resource": {"resourceType": "Patient"}, "request": "POST Patient"}
        ]));
        let p = prepare(&b.to_string(), &server(&[])).await.unwrap();
        assert_eq!(p.failures.len(), 4);
        assert!(p.failures[0].diagnostics.contains("urn:uuid:not-here"));
        assert!(p.failures[1].diagnostics.contains("no request"));
        assert!(
            p.failures[2]
                .diagnostics
                .starts_with("entry 3: its request cannot be read"),
            "{:?}",
            p.failures[2]
        );
        assert_eq!(
            p.failures[3].diagnostics,
            "entry 4: its request is not an object"
        );
        assert_eq!(p.entries().len(), 1);
        assert_eq!(entry(p.entries()[0])["request"]["method"], "DELETE");
    }

    /// `PUT Type/id` writes that id whatever the fullUrl says; references to the fullUrl
    /// follow it. A url naming no valid id (or another type) is an entry error, never a new id.
    #[tokio::test]
    async fn an_update_keeps_the_id_its_url_names() {
        let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"fullUrl": "urn:uuid:0c6f7c43-9a3c-4a55-8a1e-2b9c0a0f1e01",
             "resource": {"resourceType": "Patient", "id": "x04a"},
             "request": {"method": "PUT", "url": "Patient/x04a"}},
            {"fullUrl": "urn:uuid:0c6f7c43-9a3c-4a55-8a1e-2b9c0a0f1e02",
             "resource": {"resourceType": "Observation",
                          "subject": {"reference": "urn:uuid:0c6f7c43-9a3c-4a55-8a1e-2b9c0a0f1e01"}},
             "request": {"method": "PUT", "url": "Observation/o-1"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient/bad id"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": format!("Patient/{}", "a".repeat(65))}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Observation/o-2"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient"}}
        ]});
        let p = prepare(&b.to_string(), &server(&[])).await.unwrap();
        let targets: Vec<_> = p
            .entries()
            .iter()
            .map(|e| e.target.clone().unwrap())
            .collect();
        assert_eq!(targets, vec!["Patient/x04a", "Observation/o-1"]);
        assert_eq!(entry(p.entries()[0])["request"]["url"], "Patient/x04a");
        assert_eq!(
            entry(p.entries()[1])["resource"]["subject"]["reference"],
            "Patient/x04a"
        );
        let reasons: Vec<_> = p
            .failures
            .iter()
            .map(|f| (f.index, f.diagnostics.clone()))
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(
            reasons[0].1.contains("\"bad id\" is not a valid FHIR id"),
            "{reasons:?}"
        );
        assert!(reasons[1].1.contains("not a valid FHIR id"), "{reasons:?}");
        assert!(
            reasons[2].1.contains("must name the same type"),
            "{reasons:?}"
        );
        assert!(reasons[3].1.contains("names no resource id"), "{reasons:?}");
    }

    /// Two entries with one fullUrl, or two writing one resource, would load one resource
    /// for two counted: the second is an entry error that says why.
    #[tokio::test]
    async fn a_second_entry_with_the_same_full_url_or_target_is_an_error() {
        let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"fullUrl": "urn:uuid:0c6f7c43-9a3c-4a55-8a1e-2b9c0a0f1e03",
             "resource": {"resourceType": "Patient", "name": [{"family": "A"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:0c6f7c43-9a3c-4a55-8a1e-2b9c0a0f1e03",
             "resource": {"resourceType": "Patient", "name": [{"family": "B"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient/p9"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient/p9"}}
        ]});
        let p = prepare(&b.to_string(), &server(&[])).await.unwrap();
        assert_eq!(p.entries().len(), 2);
        assert_eq!(p.failures.len(), 2, "{:?}", p.failures);
        assert_eq!(p.failures[0].index, 1);
        assert!(
            p.failures[0].diagnostics.contains("fullUrl"),
            "{:?}",
            p.failures
        );
        assert_eq!(p.failures[1].index, 3);
        assert!(
            p.failures[1]
                .diagnostics
                .contains("writes Patient/p9, as entry 2"),
            "{:?}",
            p.failures
        );
    }

    #[tokio::test]
    async fn posts_without_ids_get_content_derived_ids() {
        let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "A"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "name": [{"family": "B"}]}, "request": {"method": "POST", "url": "Patient"}}
        ]});
        let first = prepare(&b.to_string(), &server(&[])).await.unwrap();
        let second = prepare(&b.to_string(), &server(&[])).await.unwrap();
        assert_eq!(first.entries()[0].target, second.entries()[0].target);
        assert_ne!(first.entries()[0].target, first.entries()[1].target);
    }
}
