import json
import os
import sys

import requests

token = {
    "api_key": os.environ["SEED_API_KEY"],  # Replace with your own API key
    "url": os.environ["SEED_URL"],  # Replace with your own instance
}


url = token["url"]
sys_prompt = input("sys> ")

user_input = input("user> ")
data = {
    "system_content": sys_prompt,
    "user_content": user_input,
    "model": "gpt-3.5-turbo",
    "api_key": token["api_key"],
    "continuous": [],
    "max_tokens": 3000
}
response = requests.post(url, json=data)
if response.status_code != 200:
    print(f"Request failed with status code: {response.status_code}, server returned: {response.text}")
    sys.exit(1)
else:
    result = json.loads(response.text)
print(f"ChatGPT> {result['current_response']}")
