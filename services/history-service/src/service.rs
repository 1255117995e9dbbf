//! The use cases of the history service, in domain types: who may see what
//! of a conversation. The gRPC layer calls these after parsing its input.

use crate::{
    domain::{Conversation, ConversationSummary, HistoryPage, Page, ReadState, UserId, Visibility},
    error::HistoryError,
    members::Memberships,
    search::{SearchPage, SearchQuery, SearchScope},
    store::HistoryStore,
};

#[derive(Clone)]
pub struct History {
    store: HistoryStore,
    members: Memberships,
}

impl History {
    pub fn new(store: HistoryStore, members: Memberships) -> Self {
        Self { store, members }
    }

    /// What of `conversation` `user` may see: all of a 1:1 conversation
    /// they are a party to, a group's messages from when they joined it.
    async fn visibility(
        &self,
        user: UserId,
        conversation: Conversation,
    ) -> Result<Visibility, HistoryError> {
        match conversation {
            Conversation::Direct { .. } => match conversation.peer_of(user) {
                Some(_) => Ok(Visibility::All),
                None => Err(HistoryError::PermissionDenied(format!(
                    "user {} is not a party to conversation {conversation}",
                    user.get()
                ))),
            },
            Conversation::Group(group) => {
                match self.members.of_with(user, group).await?.get(&group) {
                    Some(&joined_at_us) => Ok(Visibility::SentFrom { joined_at_us }),
                    None => Err(HistoryError::PermissionDenied(format!(
                        "user {} is not a member of group {group}",
                        user.get()
                    ))),
                }
            }
        }
    }

    pub async fn history(
        &self,
        user: UserId,
        conversation: Conversation,
        page: Page,
    ) -> Result<HistoryPage, HistoryError> {
        let visibility = self.visibility(user, conversation).await?;
        self.store.page(conversation, visibility, page).await
    }

    pub async fn conversations(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, HistoryError> {
        let groups = self.members.of(user).await?;
        let groups: Vec<(i64, i64)> = groups.iter().map(|(&g, &joined)| (g, joined)).collect();
        self.store.conversations(user, &groups, limit).await
    }

    /// Messages holding every word of `query` in what `user` may read:
    /// `conversation` alone (if they may read it), else every 1:1
    /// conversation they are a party to and every group from its join.
    pub async fn search(
        &self,
        user: UserId,
        query: &SearchQuery,
        conversation: Option<Conversation>,
        limit: u32,
        offset: u32,
    ) -> Result<SearchPage, HistoryError> {
        let conversations = match conversation {
            Some(conversation) => vec![(conversation, self.visibility(user, conversation).await?)],
            None => {
                let groups = self.members.of(user).await?;
                let mut all: Vec<(Conversation, Visibility)> = self
                    .store
                    .direct_conversations(user)
                    .await?
                    .into_iter()
                    .map(|c| (c, Visibility::All))
                    .collect();
                all.extend(groups.iter().map(|(&group, &joined_at_us)| {
                    (
                        Conversation::Group(group),
                        Visibility::SentFrom { joined_at_us },
                    )
                }));
                all
            }
        };
        self.store
            .search(&SearchScope { conversations }, query, limit, offset)
            .await
    }

    pub async fn mark_read(
        &self,
        user: UserId,
        conversation: Conversation,
        up_to: u64,
    ) -> Result<ReadState, HistoryError> {
        let visibility = self.visibility(user, conversation).await?;
        self.store
            .mark_read(user, conversation, visibility, up_to)
            .await
    }
}
