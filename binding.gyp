{
  "targets": [
    { "target_name": "polyvisor_seek", "sources": ["native/seek.c"] }
  ]
}
