-- Who is in which room, as far as the service has seen: the latest
-- membership of each user in each room, kept by the dispatcher from
-- m.room.member events. Idle logoff and membership gating read it.
CREATE TABLE room_member (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    membership TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_member_user ON room_member (user_id, membership);
