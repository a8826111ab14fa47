//! The FHIR R4 Patient compartment (CompartmentDefinition `patient`, FHIR 4.0.1): for each
//! resource type in it, the search parameters whose value ties a resource to a patient. A
//! Patient- or Group-level `$export` searches each type once per parameter (a resource found
//! twice is written once: compose removes duplicates by id).

/// `(type, parameters)`, types in name order. `Patient` itself is in the compartment by its id
/// (`_id`) as well as by `link`.
const PATIENT_COMPARTMENT: &[(&str, &[&str])] = &[
    ("Account", &["subject"]),
    ("AdverseEvent", &["subject"]),
    ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
    ("Appointment", &["actor"]),
    ("AppointmentResponse", &["actor"]),
    ("AuditEvent", &["patient"]),
    ("Basic", &["patient", "author"]),
    ("BodyStructure", &["patient"]),
    ("CarePlan", &["patient", "performer"]),
    ("CareTeam", &["patient", "participant"]),
    ("ChargeItem", &["subject"]),
    ("Claim", &["patient", "payee"]),
    ("ClaimResponse", &["patient"]),
    ("ClinicalImpression", &["subject"]),
    ("Communication", &["subject", "sender", "recipient"]),
    (
        "CommunicationRequest",
        &["subject", "sender", "recipient", "requester"],
    ),
    ("Composition", &["subject", "author", "attester"]),
    ("Condition", &["patient", "asserter"]),
    ("Consent", &["patient"]),
    (
        "Coverage",
        &["policy-holder", "subscriber", "beneficiary", "payor"],
    ),
    ("CoverageEligibilityRequest", &["patient"]),
    ("CoverageEligibilityResponse", &["patient"]),
    ("DetectedIssue", &["patient"]),
    ("DeviceRequest", &["subject", "performer"]),
    ("DeviceUseStatement", &["subject"]),
    ("DiagnosticReport", &["subject"]),
    ("DocumentManifest", &["subject", "author", "recipient"]),
    ("DocumentReference", &["subject", "author"]),
    ("Encounter", &["patient"]),
    ("EnrollmentRequest", &["subject"]),
    ("EpisodeOfCare", &["patient"]),
    ("ExplanationOfBenefit", &["patient", "payee"]),
    ("FamilyMemberHistory", &["patient"]),
    ("Flag", &["patient"]),
    ("Goal", &["patient"]),
    ("Group", &["member"]),
    ("ImagingStudy", &["patient"]),
    ("Immunization", &["patient"]),
    ("ImmunizationEvaluation", &["patient"]),
    ("ImmunizationRecommendation", &["patient"]),
    ("Invoice", &["subject", "patient", "recipient"]),
    ("List", &["subject", "source"]),
    ("MeasureReport", &["patient"]),
    ("Media", &["subject"]),
    (
        "MedicationAdministration",
        &["patient", "performer", "subject"],
    ),
    ("MedicationDispense", &["subject", "patient", "receiver"]),
    ("MedicationRequest", &["subject"]),
    ("MedicationStatement", &["subject"]),
    ("MolecularSequence", &["patient"]),
    ("NutritionOrder", &["patient"]),
    ("Observation", &["subject", "performer"]),
    ("Patient", &["_id", "link"]),
    ("Person", &["patient"]),
    ("Procedure", &["patient", "performer"]),
    ("Provenance", &["patient"]),
    ("QuestionnaireResponse", &["subject", "author"]),
    ("RelatedPerson", &["patient"]),
    ("RequestGroup", &["subject", "participant"]),
    ("ResearchSubject", &["individual"]),
    ("RiskAssessment", &["subject"]),
    ("Schedule", &["actor"]),
    ("ServiceRequest", &["subject", "performer"]),
    ("Specimen", &["subject"]),
    ("SupplyDelivery", &["patient"]),
    ("SupplyRequest", &["subject"]),
    ("VisionPrescription", &["patient"]),
];

/// The parameters tying `resource_type` to a patient; empty when the type is not in the
/// Patient compartment.
pub fn patient_params(resource_type: &str) -> &'static [&'static str] {
    PATIENT_COMPARTMENT
        .binary_search_by(|(t, _)| t.cmp(&resource_type))
        .map(|i| PATIENT_COMPARTMENT[i].1)
        .unwrap_or(&[])
}

/// The search criterion naming a batch of patients by `param` (ids in place of `$IDS`):
/// `_id=` for Patient's own id, `patient=` (a parameter that can only name Patients), else
/// `param:Patient=` so that a parameter that may name other types (`subject`, `performer`)
/// matches only Patients.
pub fn criterion(param: &str) -> String {
    use super::definition::IDS_PLACEHOLDER;
    match param {
        "_id" | "patient" => format!("{param}={IDS_PLACEHOLDER}"),
        other => format!("{other}:Patient={IDS_PLACEHOLDER}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_so_lookups_find_every_type() {
        assert!(PATIENT_COMPARTMENT.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(patient_params("Observation"), ["subject", "performer"]);
        assert_eq!(patient_params("Patient"), ["_id", "link"]);
        assert!(patient_params("Organization").is_empty());
        assert!(patient_params("Practitioner").is_empty());
    }

    #[test]
    fn criteria_name_only_patients() {
        assert_eq!(criterion("patient"), "patient=$IDS");
        assert_eq!(criterion("_id"), "_id=$IDS");
        assert_eq!(criterion("subject"), "subject:Patient=$IDS");
    }
}
