"""The chat.* and group.* API: parameters checked and names resolved, then the
service (``lannode.chat.service``) does the work."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lannode.core import api
from lannode.core.api import require
from lannode.core.chat import ChatError, dm_conversation
from lannode.core.groups import group_conversation

if TYPE_CHECKING:
    from lannode.chat.service import ChatService

MAX_PAGE = 500
MAX_BATCH = 100  # messages in one chat.send


def conversation_of(chat: ChatService, params: dict[str, Any]) -> str:
    if "conversation" in params:
        conversation: str = require(params, "conversation", str)
        if not chat.visible(conversation):
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no conversation {conversation!r} on this node")
        return conversation
    if "group" in params:
        return group_conversation(chat.resolve_group(require(params, "group", str)).id)
    return dm_conversation(chat.me, chat.peers.resolve_id(require(params, "peer", str)))


def members_of(chat: ChatService, params: dict[str, Any], *, optional: bool = False) -> list[str]:
    names = require(params, "members", list, optional=optional) or []
    if not all(isinstance(n, str) for n in names) or len(names) > 255:
        raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"members" is a list of peer names or node ids')
    return [chat.peers.resolve_id(n) for n in names]


def register(chat: ChatService, server: api.Methods) -> None:
    def chat_errors(handler: Any) -> Any:
        async def wrapped(params: dict[str, Any], caller: api.Principal) -> Any:
            try:
                return await handler(params)
            except ChatError as exc:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None

        return wrapped

    async def chat_send(params: dict[str, Any]) -> Any:
        if "bodies" in params:  # signed by the author's page (chat.draft)
            bodies = require(params, "bodies", list)
            if not bodies or len(bodies) > MAX_BATCH:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, f'"bodies" is a list of 1 to {MAX_BATCH} signed messages')
            return await chat.send_signed(conversation_of(chat, params), bodies, direct=bool(require(params, "direct", bool, optional=True)))
        # "text": one message, answered with its record; "texts": several in order, one commit
        many = "texts" in params
        texts = require(params, "texts", list) if many else [require(params, "text", str)]
        if not texts or len(texts) > MAX_BATCH or not all(isinstance(t, str) for t in texts):
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f'"texts" is a list of 1 to {MAX_BATCH} strings')
        direct = require(params, "direct", bool, optional=True) or False
        if "group" in params:
            records = await chat.send_group(chat.resolve_group(require(params, "group", str)).id, texts)
        else:
            records = await chat.send(chat.peers.resolve_id(require(params, "peer", str)), texts, direct=direct)
        return records if many else records[0]

    async def chat_draft(params: dict[str, Any]) -> Any:
        texts = require(params, "texts", list)
        if not texts or len(texts) > MAX_BATCH or not all(isinstance(t, str) for t in texts):
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f'"texts" is a list of 1 to {MAX_BATCH} strings')
        conversation = conversation_of(chat, params)
        chat.recipients_of(conversation)  # a conversation this author may write in
        return {"conversation": conversation, "drafts": chat.draft(conversation, texts)}

    async def chat_deliver(params: dict[str, Any]) -> Any:
        return await chat.deliver_direct(require(params, "body", (str, dict)))

    async def chat_log(params: dict[str, Any]) -> Any:
        limit = require(params, "limit", int, optional=True) or 50
        if not 1 <= limit <= MAX_PAGE:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f'"limit" is 1 to {MAX_PAGE}')
        return await chat.history(
            conversation_of(chat, params),
            limit=limit,
            before=require(params, "before", str, optional=True),
            search=require(params, "search", str, optional=True),
        )

    async def chat_read(params: dict[str, Any]) -> Any:
        ids = require(params, "ids", list)
        if not all(isinstance(i, str) for i in ids) or len(ids) > 512:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"ids" is a list of at most 512 message ids')
        return {"marked": await chat.mark_read(ids)}

    async def chat_conversations(params: dict[str, Any]) -> Any:
        return await chat.conversations()

    async def group_create(params: dict[str, Any]) -> Any:
        return await chat.create_group(require(params, "name", str), members_of(chat, params, optional=True))

    async def group_rename(params: dict[str, Any]) -> Any:
        return await chat.group_op(chat.resolve_group(require(params, "group", str)).id, "rename", name=require(params, "name", str))

    async def group_invite(params: dict[str, Any]) -> Any:
        return await chat.group_op(chat.resolve_group(require(params, "group", str)).id, "invite", members=members_of(chat, params))

    async def group_remove(params: dict[str, Any]) -> Any:
        return await chat.group_op(chat.resolve_group(require(params, "group", str)).id, "remove", members=members_of(chat, params))

    async def group_leave(params: dict[str, Any]) -> Any:
        return await chat.group_op(chat.resolve_group(require(params, "group", str)).id, "leave")

    async def group_draft(params: dict[str, Any]) -> Any:
        op = require(params, "op", str)
        group_id = None if op == "create" else chat.resolve_group(require(params, "group", str)).id
        plan = await chat.plan_group_op(op, group_id, name=require(params, "name", str, optional=True), members=members_of(chat, params, optional=True))
        return {"conversation": plan.conversation, "drafts": chat.draft(plan.conversation, [plan.text], kind="group", message_id=plan.message_id)}

    async def group_commit(params: dict[str, Any]) -> Any:
        return await chat.send_signed_op(require(params, "body", dict))

    async def group_list(params: dict[str, Any]) -> Any:
        return chat.groups()

    async def group_info(params: dict[str, Any]) -> Any:
        return chat.resolve_group(require(params, "group", str)).to_json(chat.me)

    for name, handler, doc in (
        ("chat.send", chat_send, '{"peer" or "group", "text" or "texts"}: send a message (or up to 100 in order); each is kept in the outbox until every recipient has it. "direct": true when the front also sends it over a data channel (the link then waits 2 s for the receipt). Also the relay path of a browser whose data channel is down.'),
        ("chat.draft", chat_draft, '{"peer" or "group", "texts"}: the next messages, unsigned, for a page that signs its own (a guest\'s); then chat.send {"peer" or "group", "bodies"}.'),
        ("chat.deliver", chat_deliver, '{"body"}: a signed message this front received over a data channel from its author\'s front: stored once, acknowledged to the author.'),
        ("chat.log", chat_log, '{"peer", "group" or "conversation", "limit"?, "before"?, "search"?}: a page of history, oldest first.'),
        ("chat.read", chat_read, '{"ids"}: mark received messages as seen; their authors get a read receipt.'),
        ("chat.conversations", chat_conversations, "Conversations with message and unread counts, newest first."),
        ("group.create", group_create, '{"name", "members"?}: a new group with these peers (names or ids).'),
        ("group.rename", group_rename, '{"group", "name"}: any member renames the group.'),
        ("group.invite", group_invite, '{"group", "members"}: any member adds peers; they receive the history.'),
        ("group.remove", group_remove, '{"group", "members"}: the creator removes members.'),
        ("group.leave", group_leave, '{"group"}: leave; the history stays on this node.'),
        ("group.draft", group_draft, '{"op": create|rename|invite|remove|leave, "group"?, "name"?, "members"?}: the operation, checked and unsigned, for a page that signs its own (a guest\'s); then group.commit.'),
        ("group.commit", group_commit, '{"body"}: a group operation its author signed (group.draft): checked again, stored and sent to the members.'),
        ("group.list", group_list, "The groups this node is or was in."),
        ("group.info", group_info, '{"group"}: one group: name, creator, members.'),
    ):
        server.method(name, chat_errors(handler), doc)
