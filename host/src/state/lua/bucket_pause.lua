-- bucket_pause(key; now, until): pauses the bucket until `until`, keeping a longer pause.
paused = later(paused, parse(ARGV[2]))
store()
return 1
