//! Creates the tables of `crate::tables` where they are missing: for the
//! emulator and tests (Terraform owns them on AWS).

use super::errors::map_sdk;
use crate::StoreError;
use crate::tables::{self, TableSpec};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification, TimeToLiveStatus,
};
use std::time::Duration;

/// How long a new table may take to become active.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// Creates every table in `tables::ALL` as `{prefix}-{suffix}`: on-demand
/// billing, GSIs projecting everything, a NEW_AND_OLD_IMAGES stream where
/// the spec asks for one, and TTL on the spec's attribute. Tables that
/// already exist are left as they are (their TTL is still switched on).
pub async fn ensure_tables(client: &Client, prefix: &str) -> Result<(), StoreError> {
    for spec in tables::ALL {
        let name = tables::table_name(prefix, spec);
        create_table(client, &name, spec).await?;
        if let Some(attribute) = spec.ttl_attribute {
            enable_ttl(client, &name, attribute).await?;
        }
    }
    Ok(())
}

fn hash_key(attribute: &str) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder().attribute_name(attribute).key_type(KeyType::Hash).build().map_err(StoreError::internal)
}

async fn create_table(client: &Client, name: &str, spec: &TableSpec) -> Result<(), StoreError> {
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(hash_key(spec.hash_key)?);
    let mut attributes = vec![spec.hash_key];
    if let Some(range) = spec.range_key {
        let sort = KeySchemaElement::builder()
            .attribute_name(range)
            .key_type(KeyType::Range)
            .build()
            .map_err(StoreError::internal)?;
        req = req.key_schema(sort);
        attributes.push(range);
    }
    attributes.extend(spec.gsis.iter().map(|g| g.hash_key));
    for a in attributes {
        let def = AttributeDefinition::builder()
            .attribute_name(a)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(StoreError::internal)?;
        req = req.attribute_definitions(def);
    }
    for g in spec.gsis {
        let gsi = GlobalSecondaryIndex::builder()
            .index_name(g.name)
            .key_schema(hash_key(g.hash_key)?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .map_err(StoreError::internal)?;
        req = req.global_secondary_indexes(gsi);
    }
    if spec.stream {
        let stream = StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(StreamViewType::NewAndOldImages)
            .build()
            .map_err(StoreError::internal)?;
        req = req.stream_specification(stream);
    }
    match req.send().await {
        Ok(_) => {}
        Err(SdkError::ServiceError(e)) if matches!(e.err(), CreateTableError::ResourceInUseException(_)) => {
            tracing::debug!(table = name, "table exists");
        }
        Err(e) => return Err(map_sdk(e)),
    }
    client
        .wait_until_table_exists()
        .table_name(name)
        .wait(TABLE_ACTIVE_TIMEOUT)
        .await
        .map_err(StoreError::unavailable)?;
    Ok(())
}

/// Switches TTL on unless it already is (enabling it twice is an error).
async fn enable_ttl(client: &Client, name: &str, attribute: &str) -> Result<(), StoreError> {
    let current = client.describe_time_to_live().table_name(name).send().await.map_err(map_sdk)?;
    if let Some(d) = current.time_to_live_description
        && matches!(d.time_to_live_status, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling))
    {
        if d.attribute_name.as_deref() != Some(attribute) {
            return Err(StoreError::internal(format!(
                "table {name} has TTL on {:?}, expected {attribute}",
                d.attribute_name
            )));
        }
        return Ok(());
    }
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .map_err(StoreError::internal)?;
    client.update_time_to_live().table_name(name).time_to_live_specification(ttl).send().await.map_err(map_sdk)?;
    Ok(())
}
