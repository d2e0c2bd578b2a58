-- wrk script: the password step of login for one verified user.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"identifier":"benchuser","password":"correct horse battery staple"}'
