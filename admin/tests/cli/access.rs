//! The admin API's credential: only the admin token opens it, and a key store without one has no
//! admin API.

use super::*;

/// The admin token opens the admin API; the /v1 token does not; without an admin token the key
/// store has no admin API.
#[test]
fn admin_token_separation() {
    let setup = Setup::new();
    let key = a_key();
    let ks = Keystore::start(Backend::Memory, Some(ADMIN_TOKEN));
    let err = failure(&show_at(&setup, &key, &ks.base, V1_TOKEN), 1);
    contains(&err, "401");
    contains(&err, "admin token was refused");
    // No token at all: clap says the flag is required.
    let out = admin(&setup, None, "show", &key, &["--keystore", &ks.base]);
    contains(&failure(&out, 2), "--admin-token");

    let off = Keystore::start(Backend::Memory, None);
    let err = failure(&show_at(&setup, &key, &off.base, ADMIN_TOKEN), 1);
    contains(&err, "404");
    contains(&err, "admin API is off");
}
