use super::*;

fn settings(url: &str) -> StoreSettings {
    StoreSettings {
        backend: super::super::Backend::Postgres,
        url: Some(url.to_owned().into()),
        ..StoreSettings::default()
    }
}

#[test]
fn a_remote_database_needs_verified_tls() {
    for url in [
        "postgresql://u:pw@127.0.0.1:5432/db",
        "postgresql://u@localhost/db?sslmode=disable",
        "postgresql://u@[::1]:5432/db",
        "postgresql:///db?host=/run/postgresql",
    ] {
        assert!(connection(&settings(url)).is_ok(), "{url}");
    }
    for url in [
        // hostaddr is where tokio-postgres connects, whatever the host's name says.
        "postgresql://u:pw@localhost/db?hostaddr=10.0.0.7&sslmode=disable",
        "postgresql://u@127.0.0.1,localhost/db",
    ] {
        assert!(connection(&settings(url)).is_err(), "{url}");
    }
    let remote = "postgresql://u:secret-pw@db.example.com:5432/db";
    let err = connection(&settings(remote)).err().unwrap().to_string();
    assert!(err.contains("sslmode=require"), "{err}");
    assert!(!err.contains("secret-pw"));
    let err = connection(&settings(&format!("{remote}?sslmode=require")))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ca_file"), "{err}");
    let err = connection(&settings("postgresql://u:secret-pw@host:notaport/db"))
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("secret-pw"), "{err}");
}

#[test]
fn the_url_is_never_printed() {
    let s = settings("postgresql://u:secret-pw@127.0.0.1/db");
    assert!(!format!("{s:?}").contains("secret-pw"));
    assert!(!toml::to_string(&s).unwrap().contains("secret-pw"));
}
