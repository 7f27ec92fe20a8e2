"""The app's data in the KV: each keyspace's layout and records, in one place.

A keyspace is written by one service only — its owner, where the rules of that data live — and
read by any service that puts an answer together: a post is shown with its author's name, its
counts and whether the reader liked it, read in one batched round trip by whoever serves it
(:mod:`mt_schema.views`), not by three more calls (the way every product at Meta reads TAO's
objects and associations).

Counts live beside what they count, in the same partition, and change in the same atomic write
as the row they count, conditional on that row's absence or presence: a count equals its list
by construction, and a write repeated after an unknown outcome changes nothing.

======================  ====================  ===========================================  ======
keyspace                partition             key -> value                                 owner
======================  ====================  ===========================================  =====
users                   <user id>             "" -> user record (JSON)                     users
handles                 <handle's 1st char>   <handle> -> user id (claim; prefix search)   users
legacy                  <legacy id>           "" -> user id (one account per legacy one)   users
sessions                sha256(token)         "" -> user id (TTL)                          users
graph                   <user id>             out:<followee> -> follow time (µs);          graph
                                              o:<time><followee>; in:<follower> -> time;
                                              i:<time><follower>; #following; #followers
graph                   pending:<legacy id>   <user id> -> time (a follow left pending)    graph
imports                 <user id> | active    <import id> -> record | <user id> -> id      graph
posts                   u:<author>            p:<post id> -> post record (JSON): the       posts
                                              author's timeline; #posts; l:<post>:<user> ->
                                              like time; #l:<post>; r:<post>:<reply> (a
                                              post's replies); #r:<post>; idem:<key> -> id
feed                    <user id>             i:<post id> -> author id (the inbox); #i     feed
                                              (its size); meta; a (last read)
notifications           <user id>             n:<id> -> Notification; d:<dedup key> -> id  feed
(any)                   (any)                 \\0outbox/<job id> -> a job (mt_jobs.outbox)  writer
======================  ====================  ===========================================  ======

Times in keys are 16 hex digits of µs, so rows sort by time. A post's id carries its author
(:func:`mt_schema.posts.new_post_id`): everything about a post lives in its author's partition,
and a like or a reply is one write there.
"""
