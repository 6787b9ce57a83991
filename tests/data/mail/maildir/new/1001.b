From: b@example.org
Subject: new one

in new
