module stashbackup/benchfileserver

go 1.21
