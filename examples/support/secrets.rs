//! Reading a secret that may come from the demo fallback.

use palisade::secret_store::{Error, ExposeSecret, SecretString, Secrets};

/// Read `name`, with a WARN when the value is the example's demo one (a provider named
/// `demo`, chained last), naming the `APP_…` variable that replaces it in production.
///
/// # Errors
/// The secret store's error when no provider has the secret or one fails.
pub async fn get_warning_on_demo(secrets: &Secrets, name: &str) -> Result<SecretString, Error> {
    let secret = secrets.get(name).await?;
    if secret.provider() == "demo" {
        tracing::warn!(
            secret = name,
            "using the demo value; set APP_{} in production",
            name.to_ascii_uppercase().replace(['/', '-'], "_")
        );
    }
    Ok(SecretString::from(secret.expose_secret().to_owned()))
}
