//! Typed states: every status, kind or role column is one of these enums, declared once with
//! its stored form. [`stored_enum!`] gives each the sea-orm column type (entities use the enum
//! itself), the GraphQL enum, `as_str`/`parse` for the few places that build SQL text, and the
//! native reader's decoder.

/// Declares a stored enum: each variant with its documentation and stored text.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            async_graphql::Enum, sea_orm::EnumIter, sea_orm::DeriveActiveEnum,
            serde::Serialize, serde::Deserialize,
        )]
        #[sea_orm(rs_type = "String", db_type = "Text")]
        pub enum $name {
            $( $(#[$vmeta])* #[sea_orm(string_value = $text)] #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// The stored form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Parses the stored form.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::db::native::FromColumn for $name {
            fn from_value(
                value: rusqlite::types::ValueRef<'_>,
                name: &str,
            ) -> rusqlite::Result<Self> {
                $crate::db::native::stored_text(value, name, $name::parse)
            }
        }
    };
}

stored_enum! {
    /// Where a job run (or a CRM sync run) stands.
    pub enum JobRunStatus {
        /// In progress.
        Running = "RUNNING",
        /// Finished.
        Succeeded = "SUCCEEDED",
        /// Stopped with an error.
        Failed = "FAILED",
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ActiveEnum;

    use super::*;

    #[test]
    fn stored_forms_round_trip() {
        use sea_orm::Iterable;
        for status in JobRunStatus::iter() {
            assert_eq!(JobRunStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.to_value(), status.as_str());
        }
        assert_eq!(JobRunStatus::parse("running"), None);
    }
}
