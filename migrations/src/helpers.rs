//! Small builders shared by the later migrations: a column of a few kinds, a table with its
//! primary key, an index, an added column, statements for PostgreSQL alone.

use sea_orm_migration::prelude::*;

pub fn name(text: &str) -> Alias {
    Alias::new(text)
}

/// A column of one of the kinds the migrations use.
pub enum Kind {
    Id,
    Text,
    BigInt,
    Int,
    Time,
    Bool,
    Json,
}

pub fn column(column: &str, kind: Kind, nullable: bool) -> ColumnDef {
    let mut def = ColumnDef::new(name(column));
    match kind {
        Kind::Id | Kind::Text => def.string(),
        Kind::BigInt => def.big_integer(),
        Kind::Int => def.integer(),
        Kind::Time => def.timestamp_with_time_zone(),
        Kind::Bool => def.boolean(),
        Kind::Json => def.json(),
    };
    if nullable {
        def.null();
    } else {
        def.not_null();
    }
    def
}

pub fn table(table: &str, primary: &[&str], columns: Vec<ColumnDef>) -> TableCreateStatement {
    let mut create = Table::create();
    create.table(name(table));
    for mut col in columns {
        create.col(&mut col);
    }
    let mut key = Index::create();
    for col in primary {
        key.col(name(col));
    }
    create.primary_key(&mut key);
    create.to_owned()
}

pub fn index(index: &str, table: &str, columns: &[&str], unique: bool) -> IndexCreateStatement {
    let mut create = Index::create();
    create.name(index).table(name(table));
    for col in columns {
        create.col(name(col));
    }
    if unique {
        create.unique();
    }
    create.to_owned()
}

pub fn add(table: &str, column: ColumnDef) -> TableAlterStatement {
    Table::alter()
        .table(name(table))
        .add_column(column.to_owned())
        .to_owned()
}

/// Drops columns, each `(table, column)` in turn (SQLite drops one column per statement).
pub async fn drop_columns(
    manager: &SchemaManager<'_>,
    columns: &[(&str, &str)],
) -> Result<(), DbErr> {
    for (t, c) in columns {
        manager
            .alter_table(
                Table::alter()
                    .table(name(t))
                    .drop_column(name(c))
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}

/// Runs `statements` in turn on PostgreSQL; does nothing on SQLite.
pub async fn on_postgres(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    if manager.get_database_backend() != sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    for sql in statements {
        manager.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}
