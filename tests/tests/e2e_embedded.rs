//! Every end-to-end scenario on the embedded backend.
latchkey_tests::e2e_suite!(latchkey_tests::system::TestSystem::embedded());
