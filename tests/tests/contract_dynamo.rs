//! The storage contract suite on DynamoDB in the emulator, fresh tables
//! (a random prefix) per test.
use latchkey_core::{adapters::dynamo, testing::Subject};

async fn subject() -> Subject {
    let config = latchkey_tests::sdk_config(&latchkey_tests::emulator_endpoint().await).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let prefix = latchkey_tests::random_prefix();
    dynamo::ensure_tables(&client, &prefix).await.expect("create the tables");
    Subject::from_store(dynamo::DynamoStore::new(client, &prefix))
}

latchkey_core::contract_suite!(subject());
