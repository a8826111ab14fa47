//! Typed table rows. A kind of row is a serde struct implementing [`TableRow`]; [`Row`] holds
//! one with its keys and ETag and is the only place rows are converted to and from the
//! service's entities: the properties by serde, 64-bit integers as `Edm.Int64` (a string with
//! its `@odata.type` annotation; a plain JSON number is an Int32 to the service), read back
//! from either form. Properties the struct does not name (the service's `Timestamp`,
//! annotations) are not kept.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Entity, StorageError, StorageResult, TableClient};

/// For `#[serde(skip_serializing_if = "...")]`: a zero (or other default) value is left out
/// of the row or message, and reads back as its default.
pub fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

/// A kind of table row.
pub trait TableRow: Serialize + DeserializeOwned {
    /// What the row is, for errors ("import file row").
    const KIND: &'static str;
    /// Properties stored as `Edm.Int64`.
    const INT64: &'static [&'static str];
}

/// One row of kind `R`: its keys, the ETag it was read with (empty: not read, or to be
/// written unconditionally), when the service last wrote it, and its properties.
#[derive(Clone, Debug)]
pub struct Row<R> {
    pub partition_key: String,
    pub row_key: String,
    pub etag: String,
    /// The service's `Timestamp` of a row read (never written).
    pub written_at: Option<time::OffsetDateTime>,
    pub data: R,
}

impl<R: TableRow> Row<R> {
    pub fn new(partition_key: &str, row_key: &str, data: R) -> Self {
        Row {
            partition_key: partition_key.to_string(),
            row_key: row_key.to_string(),
            etag: String::new(),
            written_at: None,
            data,
        }
    }

    /// Reads an entity of this kind; a row that is not one is an `Invalid` error naming it.
    pub fn from_entity(entity: Entity) -> StorageResult<Self> {
        let key = |name: &str| entity.str(name).unwrap_or_default().to_string();
        let (partition_key, row_key) = (key("PartitionKey"), key("RowKey"));
        let written_at = entity.written_at();
        let mut props = entity.props;
        for name in R::INT64 {
            if let Some(Value::String(s)) = props.get(*name)
                && let Ok(n) = s.parse::<i64>()
            {
                props.insert((*name).to_string(), Value::from(n));
            }
        }
        let data =
            serde_json::from_value(Value::Object(props)).map_err(|e| StorageError::Invalid {
                operation: "read",
                target: format!("{} {partition_key}/{row_key}", R::KIND),
                reason: e.to_string(),
            })?;
        Ok(Row {
            partition_key,
            row_key,
            etag: entity.etag,
            written_at,
            data,
        })
    }

    /// The entity to write: keys, properties, `Edm.Int64` annotations, and the ETag.
    pub fn to_entity(&self) -> Entity {
        let mut entity = Entity::new(&self.partition_key, &self.row_key);
        entity.etag = self.etag.clone();
        let props = match serde_json::to_value(&self.data) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for (name, value) in props {
            match value {
                Value::Null => {}
                Value::Number(n) if R::INT64.contains(&name.as_str()) => {
                    entity.set_i64(&name, n.as_i64().unwrap_or_default());
                }
                other => {
                    entity.props.insert(name, other);
                }
            }
        }
        entity
    }
}

/// The table client's operations on typed rows: each converts through `Row` here, so the
/// stores of import and export never handle entities.
impl TableClient {
    pub async fn get_row<R: TableRow>(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> StorageResult<Option<Row<R>>> {
        self.get(table, partition_key, row_key)
            .await?
            .map(Row::from_entity)
            .transpose()
    }

    pub async fn query_rows<R: TableRow>(
        &self,
        table: &str,
        filter: &str,
    ) -> StorageResult<Vec<Row<R>>> {
        self.query_rows_selected(table, filter, None).await
    }

    /// `query_rows` reading only the properties `select` names: those left out take their
    /// defaults.
    pub async fn query_rows_selected<R: TableRow>(
        &self,
        table: &str,
        filter: &str,
        select: Option<&str>,
    ) -> StorageResult<Vec<Row<R>>> {
        self.query_selected(table, filter, select)
            .await?
            .into_iter()
            .map(Row::from_entity)
            .collect()
    }

    /// Inserts a row; `Ok(None)` when it already exists.
    pub async fn insert_row<R: TableRow>(
        &self,
        table: &str,
        row: &Row<R>,
    ) -> StorageResult<Option<String>> {
        self.insert_new(table, &row.to_entity()).await
    }

    /// Writes a row whatever is there; returns its new ETag.
    pub async fn upsert_row<R: TableRow>(
        &self,
        table: &str,
        row: &Row<R>,
    ) -> StorageResult<String> {
        self.upsert(table, &row.to_entity()).await
    }

    /// Replaces a row if it is unchanged since it was read (its ETag moves on); `Ok(false)`
    /// when someone else changed it.
    pub async fn replace_row_if_unchanged<R: TableRow>(
        &self,
        table: &str,
        row: &mut Row<R>,
    ) -> StorageResult<bool> {
        let mut entity = row.to_entity();
        let replaced = self.replace_if_unchanged(table, &mut entity).await?;
        row.etag = entity.etag;
        Ok(replaced)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
    #[serde(rename_all = "camelCase")]
    struct Sample {
        name: String,
        big: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        later: Option<i64>,
        #[serde(default)]
        small: u16,
    }

    impl TableRow for Sample {
        const KIND: &'static str = "sample row";
        const INT64: &'static [&'static str] = &["big", "later"];
    }

    #[test]
    fn int64_properties_are_annotated_and_read_from_either_form() {
        let row = Row::new(
            "p",
            "r",
            Sample {
                name: "a".into(),
                big: 1 << 40,
                later: None,
                small: 7,
            },
        );
        let entity = row.to_entity();
        assert_eq!(entity.props["big"], "1099511627776");
        assert_eq!(entity.props["big@odata.type"], "Edm.Int64");
        assert_eq!(entity.props["small"], 7);
        assert!(!entity.props.contains_key("later"), "absent, not null");
        let back = Row::<Sample>::from_entity(entity).unwrap();
        assert_eq!(back.data, row.data);
        assert_eq!(
            (back.partition_key.as_str(), back.row_key.as_str()),
            ("p", "r")
        );

        // As the service returns it, with a Timestamp and a plain number.
        let mut read = Entity::new("p", "r");
        read.props.insert("name".into(), "b".into());
        read.props.insert("big".into(), 5.into());
        read.props
            .insert("Timestamp".into(), "2026-12-06T10:00:00Z".into());
        read.etag = "W/\"1\"".into();
        let back = Row::<Sample>::from_entity(read).unwrap();
        assert_eq!(back.data.big, 5);
        assert_eq!(back.etag, "W/\"1\"");
        assert!(back.written_at.is_some());
    }

    #[test]
    fn a_row_of_another_kind_is_an_error_naming_it() {
        let mut e = Entity::new("p", "r");
        e.props.insert("big".into(), "x".into());
        let err = Row::<Sample>::from_entity(e).unwrap_err().to_string();
        assert!(err.contains("sample row p/r"), "{err}");
    }
}
