//! Every end-to-end scenario on DynamoDB + SQS in the emulator.
latchkey_tests::e2e_suite!(latchkey_tests::system::TestSystem::aws());
