//! The forms of a FHIR reference string (local `urn:uuid:`, relative `Type/id`, absolute URL,
//! conditional `Type?query`, contained `#id`) and the id rules they rely on. Finding the
//! references in a resource's text is `raw_json`'s job.

/// The form of one `Reference.reference` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReferenceForm<'a> {
    /// `urn:uuid:...` or `urn:oid:...`: points at a `fullUrl` inside the same Bundle.
    Urn(&'a str),
    /// `Patient/123` (optionally `/_history/2`).
    Relative {
        resource_type: &'a str,
        id: &'a str,
    },
    /// `http(s)://.../Patient/123`.
    Absolute(&'a str),
    /// `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999`.
    Conditional {
        resource_type: &'a str,
        query: &'a str,
    },
    /// `#contained-id`.
    Contained,
    Other,
}

pub fn classify(reference: &str) -> ReferenceForm<'_> {
    if reference.starts_with("urn:") {
        return ReferenceForm::Urn(reference);
    }
    if reference.starts_with('#') {
        return ReferenceForm::Contained;
    }
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return ReferenceForm::Absolute(reference);
    }
    if let Some((ty, query)) = reference.split_once('?')
        && is_resource_type(ty)
    {
        return ReferenceForm::Conditional {
            resource_type: ty,
            query,
        };
    }
    let mut parts = reference.split('/');
    if let (Some(ty), Some(id)) = (parts.next(), parts.next())
        && is_resource_type(ty)
        && is_fhir_id(id)
    {
        return ReferenceForm::Relative {
            resource_type: ty,
            id,
        };
    }
    ReferenceForm::Other
}

/// Resource type names are capitalised ASCII words (`Patient`, `MedicationRequest`).
pub fn is_resource_type(s: &str) -> bool {
    s.len() > 1
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A FHIR logical id: 1-64 of `A-Za-z0-9-.`.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// `Type/id` from the tail of an absolute URL (`http://x/fhir/Patient/1/_history/2` → `Patient/1`).
pub fn relative_from_url(url: &str) -> Option<(&str, &str)> {
    let path = url.split(['?', '#']).next()?.trim_end_matches('/');
    let mut segments = path.rsplit('/');
    let last = segments.next()?;
    let before = segments.next()?;
    let (ty, id) = if before == "_history" {
        let id = segments.next()?;
        (segments.next()?, id)
    } else {
        (before, last)
    };
    (is_resource_type(ty) && is_fhir_id(id)).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_form_is_recognised() {
        assert_eq!(
            classify("urn:uuid:1f2e"),
            ReferenceForm::Urn("urn:uuid:1f2e")
        );
        assert_eq!(
            classify("Patient/123"),
            ReferenceForm::Relative {
                resource_type: "Patient",
                id: "123"
            }
        );
        assert_eq!(
            classify("Patient/123/_history/4"),
            ReferenceForm::Relative {
                resource_type: "Patient",
                id: "123"
            }
        );
        assert_eq!(
            classify("https://x.org/fhir/Patient/1"),
            ReferenceForm::Absolute("https://x.org/fhir/Patient/1")
        );
        assert_eq!(
            classify("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999"),
            ReferenceForm::Conditional {
                resource_type: "Practitioner",
                query: "identifier=http://hl7.org/fhir/sid/us-npi|999"
            }
        );
        assert_eq!(classify("#med1"), ReferenceForm::Contained);
        assert_eq!(classify("not a reference"), ReferenceForm::Other);
    }

    #[test]
    fn absolute_urls_give_type_and_id() {
        assert_eq!(
            relative_from_url("http://x/fhir/Patient/1/_history/2"),
            Some(("Patient", "1"))
        );
        assert_eq!(
            relative_from_url("https://x/Observation/a-b.c"),
            Some(("Observation", "a-b.c"))
        );
        assert_eq!(relative_from_url("https://x/"), None);
    }
}
