//! The roster: a user's friends and groups (with their members) as the
//! session hands them over, and their JSON: as strings in the login ack and
//! roster pages, as plain objects in msgid 21's results.

use serde_json::{Map, Value, json};

pub struct FriendEntry {
    pub id: i64,
    pub name: String,
    pub online: bool,
}

pub struct GroupMemberEntry {
    pub id: i64,
    pub name: String,
    pub online: bool,
    pub creator: bool,
}

pub struct GroupEntry {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub members: Vec<GroupMemberEntry>,
}

fn state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

/// A friend as the login ack lists it: a JSON object inside a string.
pub fn friend_json(f: &FriendEntry) -> String {
    json!({"id": f.id, "name": f.name, "state": state(f.online)}).to_string()
}

/// A group as the login ack lists it: a JSON object inside a string, its
/// members likewise.
pub fn group_json(g: &GroupEntry) -> String {
    let users: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            let role = if m.creator { "creator" } else { "normal" };
            json!({"id": m.id, "name": m.name, "role": role, "state": state(m.online)})
                .to_string()
                .into()
        })
        .collect();
    json!({"groupdesc": g.description, "groupname": g.name, "id": g.id, "users": users}).to_string()
}

/// msgid 21's results: friends and groups as plain objects.
pub fn roster_results(friends: &[FriendEntry], groups: &[GroupEntry]) -> Map<String, Value> {
    let friends: Vec<Value> = friends
        .iter()
        .map(|f| json!({"id": f.id, "name": f.name, "online": f.online}))
        .collect();
    let groups: Vec<Value> = groups
        .iter()
        .map(|g| {
            let members: Vec<Value> = g
                .members
                .iter()
                .map(|m| json!({"id": m.id, "name": m.name, "online": m.online, "creator": m.creator}))
                .collect();
            json!({"id": g.id, "name": g.name, "description": g.description, "members": members})
        })
        .collect();
    let mut results = Map::new();
    results.insert("friends".into(), friends.into());
    results.insert("groups".into(), groups.into());
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::classic::login_ok;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).expect("utf8")
    }

    #[test]
    fn login_ack_nests_json_texts_in_strings() {
        let friends = [FriendEntry {
            id: 2,
            name: "bob".into(),
            online: true,
        }];
        let groups = [GroupEntry {
            id: 5,
            name: "g".into(),
            description: "d".into(),
            members: vec![GroupMemberEntry {
                id: 1,
                name: "a".into(),
                online: false,
                creator: true,
            }],
        }];
        let offline = [r#"{"msg":"hi","msgid":6}"#.to_owned()];
        let got = text(login_ok(1, "a", &friends, &groups, &offline, Some(9)));
        let expected = concat!(
            r#"{"errno":0,"friends":["{\"id\":2,\"name\":\"bob\",\"state\":\"online\"}"],"#,
            r#""groups":["{\"groupdesc\":\"d\",\"groupname\":\"g\",\"id\":5,\"users\":[\"{\\\"id\\\":1,\\\"name\\\":\\\"a\\\",\\\"role\\\":\\\"creator\\\",\\\"state\\\":\\\"offline\\\"}\"]}"],"#,
            r#""id":1,"msgid":2,"name":"a","offlinemsg":["{\"msg\":\"hi\",\"msgid\":6}"],"seq":9}"#
        );
        assert_eq!(got, expected);
    }
}
