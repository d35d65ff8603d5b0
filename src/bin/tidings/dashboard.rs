//! `DashboardHub` (`/hubs/dashboard`): shared metrics anyone can publish.
//!
//! - `SendMetric(name, value)` → `ReceiveMetric(name, value)` to everyone;
//! - `JoinDashboard(id)` / `LeaveDashboard(id)`: membership of one dashboard (a group);
//! - `SendToDashboard(id, name, value)` → `ReceiveDashboardMetric(id, name, value)` to the
//!   members of that dashboard only.

use tidings::{Args, Caller, Clients, Groups, Hub, HubError};

const MAX_NAME: usize = 64;

fn check_name(what: &str, name: &str) -> Result<(), HubError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '/'));
    if ok {
        Ok(())
    } else {
        Err(HubError::new(format!(
            "a {what} is 1 to {MAX_NAME} letters, digits, spaces or '-', '_', '.', '/'"
        )))
    }
}

fn check_value(value: f64) -> Result<f64, HubError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(HubError::new("a metric value is a finite number"))
    }
}

fn group(id: &str) -> String {
    format!("dashboard:{id}")
}

async fn send_metric(
    clients: Clients,
    Args((name, value)): Args<(String, f64)>,
) -> Result<(), HubError> {
    check_name("metric name", &name)?;
    let value = check_value(value)?;
    clients.all().send("ReceiveMetric", (name, value)).await?;
    Ok(())
}

async fn join_dashboard(
    caller: Caller,
    groups: Groups,
    Args(id): Args<String>,
) -> Result<(), HubError> {
    check_name("dashboard id", &id)?;
    groups.add(caller.connection_id(), &group(&id)).await?;
    Ok(())
}

async fn leave_dashboard(
    caller: Caller,
    groups: Groups,
    Args(id): Args<String>,
) -> Result<(), HubError> {
    check_name("dashboard id", &id)?;
    groups.remove(caller.connection_id(), &group(&id)).await?;
    Ok(())
}

async fn send_to_dashboard(
    clients: Clients,
    Args((id, name, value)): Args<(String, String, f64)>,
) -> Result<(), HubError> {
    check_name("dashboard id", &id)?;
    check_name("metric name", &name)?;
    let value = check_value(value)?;
    clients
        .group(group(&id))
        .send("ReceiveDashboardMetric", (&id, name, value))
        .await?;
    Ok(())
}

/// The dashboard hub.
pub fn hub() -> Hub {
    crate::hub_builder("DashboardHub")
        .method("SendMetric", send_metric)
        .method("JoinDashboard", join_dashboard)
        .method("LeaveDashboard", leave_dashboard)
        .method("SendToDashboard", send_to_dashboard)
        .build()
}
