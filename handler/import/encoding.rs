//! What uploaded bytes must be before they are read as JSON (UTF-8 text; a leading byte-order
//! mark, which editors on Windows write, is dropped), and JSON errors told the way a user can
//! act on them: where the text stops being JSON, never the parser's internal type names.

use serde_json::error::Category;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` as UTF-8 text without a leading byte-order mark, or why it is not UTF-8 text.
/// `what` names the bytes in the reason ("the file", "the line").
pub fn utf8_text<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, String> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(format!(
            "{what} is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "{what} is not UTF-8 text: byte {} is not valid UTF-8; save it as UTF-8",
            e.valid_up_to() + 1
        )
    })
}

/// A `serde_json` error reading `what` as `expected`, located by line and column.
pub fn json_error_text(e: &serde_json::Error, what: &str, expected: &str) -> String {
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        Category::Data => format!("{what} is JSON, but not {expected} ({at})"),
        Category::Eof => format!("{what} ends before its JSON is complete ({at})"),
        Category::Syntax | Category::Io => {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            format!("{what} is not valid JSON: {message} ({at})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_dropped_and_other_encodings_are_named() {
        assert_eq!(utf8_text(b"\xEF\xBB\xBF{}", "the file"), Ok("{}"));
        assert_eq!(utf8_text(b"{}", "the file"), Ok("{}"));
        let e = utf8_text(b"\xFF\xFE{\x00", "the file").unwrap_err();
        assert!(e.contains("UTF-16"), "{e}");
        let e = utf8_text(b"{\"a\":\"\xE9\"}", "the line").unwrap_err();
        assert_eq!(
            e,
            "the line is not UTF-8 text: byte 7 is not valid UTF-8; save it as UTF-8"
        );
    }

    #[test]
    fn json_errors_say_where_without_type_names() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Head {
            a: String,
        }
        let text = |json: &str| {
            let e = serde_json::from_str::<Head>(json).unwrap_err();
            json_error_text(&e, "the line", "a resource object")
        };
        assert_eq!(
            text("[1]"),
            "the line is JSON, but not a resource object (line 1, column 2)"
        );
        assert!(!text("[1]").contains("Head"));
        assert!(text("{\"a\": tru}").starts_with("the line is not valid JSON: expected ident"));
        assert!(text("{\"a\": \"x\"").contains("ends before its JSON is complete"));
    }
}
