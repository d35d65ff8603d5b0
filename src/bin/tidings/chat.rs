//! `ChatHub` (`/hubs/chat`): `SendMessage(user, text)` → `ReceiveMessage(user, text)` to
//! everyone, and rooms as groups: `JoinRoom(room, user)`, `LeaveRoom(room, user)`,
//! `SendToRoom(room, user, text)` → `ReceiveRoomMessage(room, user, text)` to the room, and
//! `RoomEvent(room, user, "joined" | "left")` to the room's members.

use tidings::{Args, Caller, Clients, Groups, Hub, HubError};

const MAX_USER: usize = 40;
const MAX_TEXT: usize = 2_000;
const MAX_ROOM: usize = 40;

fn check_user(user: &str) -> Result<&str, HubError> {
    let user = user.trim();
    if user.is_empty() || user.chars().count() > MAX_USER {
        return Err(HubError::new(format!(
            "a user name is 1 to {MAX_USER} characters"
        )));
    }
    Ok(user)
}

fn check_text(text: &str) -> Result<&str, HubError> {
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
        return Err(HubError::new(format!(
            "a message is 1 to {MAX_TEXT} characters"
        )));
    }
    Ok(text)
}

/// The group of a room.
fn room_group(room: &str) -> Result<String, HubError> {
    let room = room.trim();
    let ok = !room.is_empty()
        && room.chars().count() <= MAX_ROOM
        && room
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(HubError::new(format!(
            "a room name is 1 to {MAX_ROOM} letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(format!("room:{room}"))
}

async fn send_message(
    clients: Clients,
    Args((user, text)): Args<(String, String)>,
) -> Result<(), HubError> {
    let user = check_user(&user)?;
    let text = check_text(&text)?;
    clients.all().send("ReceiveMessage", (user, text)).await?;
    Ok(())
}

async fn join_room(
    caller: Caller,
    groups: Groups,
    clients: Clients,
    Args((room, user)): Args<(String, String)>,
) -> Result<(), HubError> {
    let group = room_group(&room)?;
    let user = check_user(&user)?;
    groups.add(caller.connection_id(), &group).await?;
    clients
        .group(&group)
        .send("RoomEvent", (room.trim(), user, "joined"))
        .await?;
    Ok(())
}

async fn leave_room(
    caller: Caller,
    groups: Groups,
    clients: Clients,
    Args((room, user)): Args<(String, String)>,
) -> Result<(), HubError> {
    let group = room_group(&room)?;
    let user = check_user(&user)?;
    groups.remove(caller.connection_id(), &group).await?;
    clients
        .group(&group)
        .send("RoomEvent", (room.trim(), user, "left"))
        .await?;
    Ok(())
}

async fn send_to_room(
    caller: Caller,
    groups: Groups,
    clients: Clients,
    Args((room, user, text)): Args<(String, String, String)>,
) -> Result<(), HubError> {
    let group = room_group(&room)?;
    let user = check_user(&user)?;
    let text = check_text(&text)?;
    if !groups
        .members(&group)
        .iter()
        .any(|m| m == caller.connection_id())
    {
        return Err(HubError::new(format!(
            "join room '{}' before sending to it",
            room.trim()
        )));
    }
    clients
        .group(&group)
        .send("ReceiveRoomMessage", (room.trim(), user, text))
        .await?;
    Ok(())
}

/// The chat hub.
pub fn hub() -> Hub {
    crate::hub_builder("ChatHub")
        .method("SendMessage", send_message)
        .method("JoinRoom", join_room)
        .method("LeaveRoom", leave_room)
        .method("SendToRoom", send_to_room)
        .build()
}
